"""One finding about a dataset: which file, how bad, and why (shared by blueprint, scan and check)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """`severity` is "error" (training would fail or silently train the wrong thing) or "warning"."""

    path: str
    severity: str
    reason: str
    files: tuple[str, ...] = ()  # every file a folder-level finding concerns, so each can be fixed

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "severity": self.severity, "reason": self.reason, "files": list(self.files)}


def error(path: object, reason: str, files: Iterable[object] = ()) -> Problem:
    return Problem(str(path), ERROR, reason, tuple(str(f) for f in files))


def warning(path: object, reason: str, files: Iterable[object] = ()) -> Problem:
    return Problem(str(path), WARNING, reason, tuple(str(f) for f in files))
