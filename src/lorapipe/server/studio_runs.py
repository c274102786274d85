"""The studio's training runs: pipeline runs started, followed, stopped and published on behalf of the page.

A run is an ordinary pipeline run (SQLite record, run folder, detached worker process), so `lorapipe runs list`
shows it and `lorapipe runs cancel` stops it; the server only starts and watches it. The device rule lives here:
one training at a time on this machine's accelerator, whoever started the other one (the CLI included).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lorapipe.errors import PipelineError
from lorapipe.file_names import TRAIN_SUMMARY_NAME
from lorapipe.pipeline.backend import BACKENDS
from lorapipe.pipeline.progress import ProgressReader, list_checkpoints, list_samples
from lorapipe.pipeline.records import RunRecord, RunStore
from lorapipe.pipeline.request import PipelineHome, RunRequest
from lorapipe.pipeline.runs import cancel_run, create_run, resume_run, start_detached, training_runs

RUN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
_READERS_KEPT = 64  # progress readers of recently followed runs (each holds a loss series)
_BUSY_CACHE_S = 1.0  # how long "is a run training?" is trusted (generation requests ask it every time)
SNAPSHOT_TTL_S = 0.5  # within this window a run's snapshot is answered without even looking at its files


@dataclass(frozen=True)
class Snapshot:
    """A run's snapshot as the routes send it: JSON bytes, their ETag, and what a follower needs to read."""

    body: bytes
    etag: str  # a quoted strong validator (RFC 9110), the hash of `body`
    status: str
    step: int

    @classmethod
    def of(cls, snapshot: dict) -> Snapshot:
        body = json.dumps(snapshot, separators=(",", ":")).encode()
        etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
        return cls(body, etag, snapshot["status"], snapshot["progress"]["step"])


@dataclass
class _Cached:
    snapshot: Snapshot
    fingerprint: tuple
    checked: float  # time.monotonic() of the last look at the files


class RunNotFound(PipelineError):
    """No such run (never existed, or its record or folder was deleted)."""


class DeviceBusy(PipelineError):
    """A training run already holds this machine's accelerator."""

    def __init__(self, message: str, run: RunRecord, retry_after_s: int):
        super().__init__(message)
        self.run = run
        self.retry_after_s = retry_after_s


class StudioRuns:
    """Starts and follows pipeline runs in one pipeline home; thread-safe (routes call it from worker threads)."""

    def __init__(
        self, home: PipelineHome, *, base_model: str | None, lora_dir: str | None, template: RunRequest | None = None
    ):
        """`template`: what every run is asked besides dataset, config and names (backend, output, SageMaker
        job settings); None = the local backend with the server's base model."""
        self.home = home
        self.template = template
        self.base_model = base_model
        self.lora_dir = lora_dir
        self._start_lock = threading.Lock()  # check-then-start of a training is one step
        self._readers: collections.OrderedDict[str, ProgressReader] = collections.OrderedDict()
        self._readers_lock = threading.Lock()
        self._busy_checked = 0.0
        self._busy: RunRecord | None = None
        self._snapshots: collections.OrderedDict[str, _Cached] = collections.OrderedDict()
        self._snapshots_lock = threading.Lock()  # guards the dict; a run's own lock guards its rebuild
        self._rebuild_locks: dict[str, threading.Lock] = {}

    # -- starting -----------------------------------------------------------------------------------------------
    def check_config(self, dataset_dir: Path, config: Path) -> tuple[str, ...]:
        """Validate the training config as the trainer will read it; raise ConfigProblems naming every key."""
        from lorapipe.config.load import load_train_config

        loaded = load_train_config(
            dataset_dir,
            config_path=config,
            output_dir=self.home.root / "studio" / "check-output",
            base_model=self.base_model,
        )
        return loaded.warnings

    def start(self, dataset_dir: Path, *, config: Path, lora_name: str | None) -> RunRecord:
        """Create and start a run; on the local backend only while no other training holds the device."""
        if self.template is None:
            request = RunRequest(
                dataset=str(dataset_dir),
                base_model=self.base_model,
                config=str(config),
                lora_dir=self.lora_dir,
                lora_name=lora_name,
            )
        else:  # the server's run template (e.g. the sagemaker backend, its output prefix and job settings)
            request = dataclasses.replace(
                self.template,
                dataset=str(dataset_dir),
                config=str(config),
                lora_dir=self.lora_dir,
                lora_name=lora_name,
                base_model=self.template.base_model or self.base_model,
            )
        with self._start_lock:
            if not BACKENDS[request.backend].remote:  # it trains on this machine's accelerator
                self._refuse_when_busy()
            record = create_run(request, self.home)
            start_detached(self.home, record.id)
            self._busy_checked = 0.0
        return self.get(record.id)

    def resume(self, run_id: str) -> RunRecord:
        with self._start_lock:
            cancelled = self.get(run_id)
            if not BACKENDS[cancelled.backend].remote:
                self._refuse_when_busy()
            record = resume_run(self.home, cancelled.id)
            start_detached(self.home, record.id)
            self._busy_checked = 0.0
        return self.get(record.id)

    def cancel(self, run_id: str) -> RunRecord:
        record = cancel_run(self.home, self.get(run_id).id)
        self._busy_checked = 0.0
        self._forget_snapshot(record.id)
        return record

    def refuse_while_training_on(self, dataset_dir: Path) -> None:
        """A prepared folder is what its runs read: it is not replaced while one of them is unfinished."""
        for record in self.list(limit=200):
            if not record.finished and Path(record.dataset) == dataset_dir:
                raise DeviceBusy(
                    f"run {record.id} is training on this dataset; wait for it or cancel it before "
                    "preparing the dataset again",
                    record,
                    self.retry_after(record),
                )

    def _refuse_when_busy(self) -> None:
        busy = self.training_run(fresh=True)
        if busy is not None:
            raise DeviceBusy(
                f"run {busy.id} is training on this machine's accelerator; wait for it to finish or "
                "cancel it before starting another",
                busy,
                self.retry_after(busy),
            )

    # -- the device -----------------------------------------------------------------------------------------------
    def training_run(self, *, fresh: bool = False) -> RunRecord | None:
        """The local run holding the accelerator, if any (cached for a second unless `fresh`)."""
        now = time.monotonic()
        if fresh or now - self._busy_checked > _BUSY_CACHE_S:
            running = training_runs(self.home)
            self._busy = running[0] if running else None
            self._busy_checked = now
        return self._busy

    def retry_after(self, record: RunRecord) -> int:
        """Seconds until the run should be done: the trainer's own ETA, else a minute."""
        progress = self.progress(record)
        eta = progress.eta_s
        return max(1, round(eta + 5)) if eta is not None and progress.step else 60

    # -- following ------------------------------------------------------------------------------------------------
    def get(self, run_id: str) -> RunRecord:
        _check_run_id(run_id)
        if not self.home.database.is_file():
            raise RunNotFound(f"run {run_id}: no such run")
        try:
            record = RunStore(self.home.database).get(run_id)
        except PipelineError:
            raise RunNotFound(f"run {run_id}: no such run (deleted, or started in another home)") from None
        if not record.run_dir.is_dir():
            raise RunNotFound(f"run {run_id}: its folder {record.run_dir.name} was deleted")
        return record

    def list(self, limit: int = 50) -> list[RunRecord]:
        if not self.home.database.is_file():
            return []
        return RunStore(self.home.database).list_runs(limit=limit)

    def progress(self, record: RunRecord) -> ProgressReader:
        with self._readers_lock:
            reader = self._readers.pop(record.id, None) or ProgressReader(record.run_dir / "run.log")
            self._readers[record.id] = reader
            while len(self._readers) > _READERS_KEPT:
                self._readers.popitem(last=False)
            reader.update()
        return reader

    def cached_snapshot(self, run_id: str) -> Snapshot | None:
        """The shared snapshot if it was checked within SNAPSHOT_TTL_S (no file or database work: safe on the event
        loop, so most polls of a watched run cost no thread hop at all)."""
        with self._snapshots_lock:
            cached = self._snapshots.get(run_id)
        return cached.snapshot if cached is not None and time.monotonic() - cached.checked < SNAPSHOT_TTL_S else None

    def current_snapshot(self, run_id: str) -> Snapshot:
        """The run's snapshot, rebuilt only when its files changed, however many clients ask.

        The watchers of a run must not slow the run down (the trainer shares the machine's CPU with this server):
        a look costs a few `stat` calls (the run's log, its train and sample folders, the run database); the
        database read, the log parse and the JSON encoding happen only when one of them changed, once per change
        (one rebuild per run at a time; clients arriving meanwhile get its result)."""
        _check_run_id(run_id)  # before its folder is looked at: no client string becomes a path
        with self._snapshots_lock:
            lock = self._rebuild_locks.setdefault(run_id, threading.Lock())
        with lock:
            with self._snapshots_lock:
                cached = self._snapshots.get(run_id)
            now = time.monotonic()
            if cached is not None and now - cached.checked < SNAPSHOT_TTL_S:
                return cached.snapshot
            fingerprint = self._fingerprint(run_id)
            if cached is not None and cached.fingerprint == fingerprint:
                cached.checked = now
                return cached.snapshot
            try:
                snapshot = Snapshot.of(self.snapshot(run_id))
            except RunNotFound:
                self._forget_snapshot(run_id)
                with self._snapshots_lock:  # an id that names nothing keeps nothing here
                    self._rebuild_locks.pop(run_id, None)
                raise
            with self._snapshots_lock:
                self._snapshots[run_id] = _Cached(snapshot, fingerprint, now)
                self._snapshots.move_to_end(run_id)
                while len(self._snapshots) > _READERS_KEPT:
                    gone, _ = self._snapshots.popitem(last=False)
                    self._rebuild_locks.pop(gone, None)
            return snapshot

    def _fingerprint(self, run_id: str) -> tuple:
        """What changes whenever the snapshot can: sizes and mtimes of the files it is built from."""
        run_dir = self.home.run_dir(run_id)
        database = self.home.database
        paths = (
            run_dir / "run.log",
            run_dir / "train",
            run_dir / "train" / "sample",
            database,
            database.with_name(database.name + "-wal"),  # WAL mode: a worker's status write lands here first
        )
        marks = []
        for path in paths:
            try:
                stat = os.stat(path)
            except OSError:  # not there (yet, or any more)
                marks.append(None)
            else:
                marks.append((stat.st_mtime_ns, stat.st_size))
        return tuple(marks)

    def _forget_snapshot(self, run_id: str) -> None:
        with self._snapshots_lock:
            self._snapshots.pop(run_id, None)

    def snapshot(self, run_id: str) -> dict:
        """Everything the page shows about a run: record, steps, progress, loss series, checkpoints, samples."""
        record = self.get(run_id)
        progress = self.progress(record)
        train_dir = record.run_dir / "train"
        return {
            "id": record.id,
            "status": record.status,
            "error": record.error,
            "dataset": Path(record.dataset).name,
            "created": record.created,
            "updated": record.updated,
            "lora_name": record.request.get("lora_name"),
            "steps": [{"name": s.name, "status": s.status, "detail": s.detail} for s in record.steps],
            "progress": progress.to_json(),
            "checkpoints": [c.to_json() for c in list_checkpoints(train_dir, final_steps=progress.step or None)],
            "samples": [f"sample/{name}" for name in list_samples(train_dir)],
        }

    def file(self, run_id: str, name: str) -> Path:
        """A run's LoRA file, sample image or summary by its listed name; never a path the client built."""
        record = self.get(run_id)
        train_dir = record.run_dir / "train"
        allowed = {c.name for c in list_checkpoints(train_dir)}
        allowed |= {f"sample/{n}" for n in list_samples(train_dir)}
        if (train_dir / TRAIN_SUMMARY_NAME).is_file():
            allowed.add(TRAIN_SUMMARY_NAME)
        if name not in allowed:
            raise RunNotFound(f"{name}: no such file in run {record.id}; see its file list")
        return train_dir / name

    # -- publishing -------------------------------------------------------------------------------------------
    def publish(self, run_id: str, checkpoint: str, lora_name: str | None, lora_dir: Path) -> dict:
        """Copy one checkpoint into the generator's LoRA folder (checked, atomic) under a name the registry lists."""
        from lorapipe.pipeline.publish import publish_checkpoint

        record = self.get(run_id)
        if not checkpoint.endswith(".safetensors"):
            raise RunNotFound(f"checkpoint {checkpoint!r}: not a LoRA file of run {record.id}")
        path = self.file(run_id, checkpoint)
        name = lora_name or _published_name(record, checkpoint)
        return publish_checkpoint(path, lora_dir=lora_dir, lora_name=name)


def _check_run_id(run_id: str) -> None:
    if not RUN_ID.match(run_id or ""):
        raise RunNotFound(f"run {run_id!r}: not a run id (YYYYmmdd-HHMMSS-xxxxxx); see the run list")


def _published_name(record: RunRecord, checkpoint: str) -> str:
    """`<checkpoint stem>-<run suffix>`: unique per run, and readable in a prompt tag."""
    return f"{Path(checkpoint).stem}-{record.id.rsplit('-', 1)[-1]}"
