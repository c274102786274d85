"""A run's log file (``run.log`` in its run folder) and the cancellation flag its worker shares with backends."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path


class RunLog:
    """Appends timestamped pipeline lines and raw child-process lines to one file, flushed as they come.

    Keeps the last lines in memory so a failure message can quote the trainer's own words.
    """

    def __init__(self, path: Path, tail_lines: int = 40) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a", encoding="utf-8", buffering=1)
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._lock = threading.Lock()

    def info(self, message: str) -> None:
        self._write(f"[{time.strftime('%H:%M:%S')}] {message}")

    def raw(self, line: str) -> None:
        """A line from a child process, kept verbatim (progress lines like ``step=3 loss=...``)."""
        self._write(line.rstrip("\n"))

    def _write(self, line: str) -> None:
        with self._lock:
            self._tail.append(line)
            self._handle.write(line + "\n")

    def tail(self, lines: int = 20) -> str:
        with self._lock:
            return "\n".join(list(self._tail)[-lines:])

    def close(self) -> None:
        self._handle.close()


@dataclass(frozen=True)
class Cancellation:
    """Set by the worker's SIGTERM handler; backends poll it and stop their job."""

    event: threading.Event = field(default_factory=threading.Event)

    def request(self) -> None:
        self.event.set()

    @property
    def requested(self) -> bool:
        return self.event.is_set()
