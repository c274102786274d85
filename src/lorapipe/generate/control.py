"""Per-job control shared between the worker running a generation and whoever watches it (HTTP handlers).

The generator calls `on_step` between denoising steps; that is where cancellation (client gone, deadline passed)
stops the job and where interrupt/skip take effect, so no step is ever cut in half.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from lorapipe.errors import GenerationError

SHUTDOWN_REASON = "server shutting down"


class GenerationCancelled(GenerationError):
    """The job was cancelled (client disconnected, deadline passed); nothing is returned."""


@dataclass(frozen=True)
class ProgressSnapshot:
    """A consistent read of a job's progress (A1111 /progress `state` fields)."""

    job_no: int
    job_count: int
    sampling_step: int
    sampling_steps: int
    started_at: float | None
    interrupted: bool
    skipped: bool

    @property
    def fraction(self) -> float:
        """A1111's formula: 0.01 + job_no/job_count + (step/steps)/job_count, capped at 1."""
        if self.job_count <= 0:
            return 0.0
        inner = self.sampling_step / self.sampling_steps if self.sampling_steps else 0.0
        return min(1.0, 0.01 + self.job_no / self.job_count + inner / self.job_count)


class JobControl:
    """Flags and counters for one job. Thread-safe: written by the worker, read and flagged by handlers."""

    def __init__(self, deadline: float | None = None):
        self.deadline = deadline  # time.monotonic() value after which the job is cancelled
        self._lock = threading.Lock()
        self._cancel_reason: str | None = None
        self._interrupted = threading.Event()
        self._skipped = threading.Event()
        self._job_no = 0
        self._job_count = 0
        self._step = 0
        self._steps = 0
        self._started_at: float | None = None

    # -- called by watchers -------------------------------------------------------------------------------
    def cancel(self, reason: str) -> None:
        with self._lock:
            self._cancel_reason = self._cancel_reason or reason

    def interrupt(self) -> None:
        """Stop sampling; the images decoded from the current latents are still returned (A1111 interrupt)."""
        self._interrupted.set()

    def skip(self) -> None:
        """Finish the current image early and go on with the next batch (A1111 skip)."""
        self._skipped.set()

    def snapshot(self) -> ProgressSnapshot:
        with self._lock:
            return ProgressSnapshot(
                self._job_no,
                self._job_count,
                self._step,
                self._steps,
                self._started_at,
                self._interrupted.is_set(),
                self._skipped.is_set(),
            )

    # -- called by the generator --------------------------------------------------------------------------
    @property
    def interrupted(self) -> bool:
        return self._interrupted.is_set()

    def begin(self, job_count: int) -> None:
        with self._lock:
            self._job_count, self._job_no, self._started_at = job_count, 0, time.monotonic()
        self.check()

    def begin_batch(self, job_no: int, steps: int) -> None:
        self._skipped.clear()
        with self._lock:
            self._job_no, self._step, self._steps = job_no, 0, steps
        self.check()

    def should_stop_sampling(self) -> bool:
        """True when the current batch must stop denoising (interrupt or skip)."""
        return self._interrupted.is_set() or self._skipped.is_set()

    def on_step(self, step: int) -> None:
        with self._lock:
            self._step = step
        self.check()

    def check(self) -> None:
        """Raise GenerationCancelled when cancelled or past the deadline."""
        reason = self._cancel_reason
        if reason is None and self.deadline is not None and time.monotonic() > self.deadline:
            reason = "request timed out"
        if reason is not None:
            raise GenerationCancelled(f"generation cancelled: {reason}")
