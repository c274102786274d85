"""One worker thread consuming a bounded FIFO of generation jobs (the GPU does one thing at a time).

A full queue refuses new work at once (the caller answers 503 + Retry-After) instead of growing without bound.
Each job carries a JobControl: handlers read its progress and flag interrupt/skip/cancel; the generator checks
the flags between denoising steps. The worker survives every job failure.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field

from lorapipe.generate.control import SHUTDOWN_REASON, GenerationCancelled, JobControl
from lorapipe.generate.generator import GenerationRequest, Generator

log = logging.getLogger(__name__)
_RECENT_TASKS = 256


class QueueClosed(Exception):
    """The server is shutting down and takes no new work."""


class QueueFull(Exception):
    """No room in the queue; `retry_after_s` is an estimate of when there will be."""

    def __init__(self, retry_after_s: int):
        super().__init__("queue full")
        self.retry_after_s = retry_after_s


@dataclass
class Job:
    task_id: str
    request: GenerationRequest
    control: JobControl
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    queued_at: float = field(default_factory=time.monotonic)


def new_task_id(kind: str) -> str:
    """A1111's shape: `task(txt2img-xxxxxxxxxxxxxxx)`."""
    return f"task({kind}-{secrets.token_hex(8)[:15]})"


class JobQueue:
    """Bounded FIFO + one worker thread around a Generator."""

    def __init__(self, generator: Generator, *, maxsize: int):
        self.generator = generator
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=maxsize)
        self._lock = threading.Lock()
        self._current: Job | None = None
        self._pending: dict[str, Job] = {}
        self._completed: collections.OrderedDict[str, bool] = collections.OrderedDict()
        self._seconds_per_job = 5.0  # running estimate for Retry-After
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="lorapipe-gpu-worker", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Take no new work and cancel every queued and running job; a running one stops at its next denoising
        step. Safe to call more than once and from any thread (the SIGTERM handler calls it)."""
        with self._lock:
            self._closed.set()
            jobs = list(self._pending.values()) + ([self._current] if self._current else [])
        for job in jobs:
            job.control.cancel(SHUTDOWN_REASON)

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel queued and running jobs, then let the worker exit."""
        self.close()
        while True:  # make room for the stop marker even when the queue is full
            try:
                self._queue.put_nowait(None)
                break
            except queue.Full:
                try:
                    stale = self._queue.get_nowait()
                    if stale is not None:
                        stale.future.set_exception(GenerationCancelled(f"generation cancelled: {SHUTDOWN_REASON}"))
                except queue.Empty:
                    pass
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, task_id: str, request: GenerationRequest, control: JobControl) -> Job:
        job = Job(task_id=task_id, request=request, control=control)
        with self._lock:
            if self._closed.is_set():
                raise QueueClosed()
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                waiting = self._queue.qsize() + 1
                raise QueueFull(max(1, round(waiting * self._seconds_per_job))) from None
            self._pending[task_id] = job
        return job

    # -- observation -----------------------------------------------------------------------------------
    def current(self) -> Job | None:
        return self._current

    def find(self, task_id: str) -> tuple[str, Job | None]:
        """('active'|'queued'|'completed'|'unknown', job)."""
        with self._lock:
            if self._current is not None and self._current.task_id == task_id:
                return "active", self._current
            if task_id in self._pending:
                return "queued", self._pending[task_id]
            if task_id in self._completed:
                return "completed", None
        return "unknown", None

    def pending_count(self) -> int:
        return self._queue.qsize()

    # -- the worker ------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self._pending.pop(job.task_id, None)
                self._current = job
            started = time.monotonic()
            try:
                if job.future.set_running_or_notify_cancel():
                    job.future.set_result(self.generator.generate(job.request, job.control))
            except BaseException as exc:  # noqa: BLE001 - the worker must outlive every job
                if not isinstance(exc, GenerationCancelled):
                    log.exception("generation %s failed", job.task_id)
                if not job.future.done():
                    job.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
                _release_accelerator_memory()
            finally:
                elapsed = time.monotonic() - started
                with self._lock:
                    self._current = None
                    self._completed[job.task_id] = True
                    while len(self._completed) > _RECENT_TASKS:
                        self._completed.popitem(last=False)
                    self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * elapsed


def _release_accelerator_memory() -> None:
    """After a failure (OOM included) hand cached blocks back so the next job starts clean."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
