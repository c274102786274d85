"""What the CLI calls: start a run (detached or in this process), follow its log, cancel it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO, cast

from lorapipe.atomic import atomic_write_text
from lorapipe.errors import PipelineError
from lorapipe.pipeline.backend import BACKENDS, RemoteTrainBackend
from lorapipe.pipeline.records import RunRecord, RunStore, new_run_id
from lorapipe.pipeline.request import PipelineHome, RunRequest
from lorapipe.pipeline.runlog import RunLog

# How long after a cancel a still-living worker is believed to be that run's (the trainer's stop grace and then some).
WIND_DOWN_S = 300.0


def create_run(request: RunRequest, home: PipelineHome) -> RunRecord:
    """Record a queued run and make its folder (request.json, empty run.log)."""
    import json

    records = RunStore(home.database)
    run_id = new_run_id()
    run_dir = home.run_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=False)
    atomic_write_text(run_dir / "request.json", json.dumps(request.to_json(), indent=2, sort_keys=True) + "\n")
    (run_dir / "run.log").touch()
    return records.create_run(
        run_id,
        backend=request.backend,
        dataset=request.dataset,
        output=request.output,
        run_dir=run_dir,
        request=request.to_json(),
    )


def resume_run(home: PipelineHome, run_id: str) -> RunRecord:
    """A new run with a stopped run's request; its train step picks up the training state the stopped trainer
    saved (same content key), so training goes on from where it stopped instead of from step 0."""
    record = RunStore(home.database).get(run_id)
    if record.status not in ("cancelled", "failed"):
        raise PipelineError(f"run {record.id}: it is {record.status}; only a cancelled or failed run is resumed")
    return create_run(RunRequest.from_json(record.request), home)


def start_detached(home: PipelineHome, run_id: str) -> int:
    """Start the worker in its own session (survives the CLI's terminal) and record its pid."""
    records = RunStore(home.database)
    run_dir = home.run_dir(run_id)
    with open(run_dir / "worker.out", "ab") as sink:
        worker = subprocess.Popen(
            [sys.executable, "-m", "lorapipe.pipeline.worker", "--home", str(home.root), run_id],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=run_dir,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    records.update_run(run_id, pid=worker.pid)
    return worker.pid


def cancel_run(home: PipelineHome, run_id: str) -> RunRecord:
    """Mark the run cancelled and signal its worker group; a finished run is left as it is."""
    records = RunStore(home.database)
    record = records.get(run_id)
    if record.finished:
        raise PipelineError(f"run {record.id}: already {record.status}; nothing to cancel")
    records.finish_run(record.id, "cancelled", "cancelled by `lorapipe runs cancel`")
    if record.pid and _alive(record.pid):
        try:
            if os.getpgid(record.pid) == record.pid:
                os.killpg(record.pid, signal.SIGTERM)  # a detached worker leads its group: its trainer gets it too
            else:
                os.kill(record.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    elif BACKENDS[record.backend].remote and record.status == "running":
        _stop_orphaned_job(record)
    return records.get(record.id)


def _stop_orphaned_job(record: RunRecord) -> None:
    """The worker is gone (killed, machine rebooted) but its remote job may still be billing: stop it here."""
    backend = cast(RemoteTrainBackend, BACKENDS[record.backend].from_request(RunRequest.from_json(record.request)))
    line = backend.stop_run(record.id)  # a remote spec builds a RemoteTrainBackend
    log = RunLog(Path(record.run_dir) / "run.log")
    try:
        log.info(f"cancel: worker {record.pid} is gone; {line}")
    finally:
        log.close()


def _alive(pid: int) -> bool:
    try:  # reap the worker if this process started it, or a finished worker stays a zombie that looks alive
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_lost_runs(home: PipelineHome) -> None:
    """A run still 'running' whose worker process is gone (machine rebooted, killed -9) is failed, not stuck."""
    records = RunStore(home.database)
    for record in records.list_runs(limit=200):
        if not record.finished and record.pid and not _alive(record.pid):
            records.finish_run(record.id, "failed", f"worker process {record.pid} ended without finishing the run")


def training_runs(home: PipelineHome) -> list[RunRecord]:
    """Runs that hold (or are about to hold) this machine's accelerator (a backend that is not remote): unfinished
    ones, and cancelled ones whose worker is still winding down (its trainer saving state). A run whose worker died
    is marked failed on the way, so it never blocks the device."""
    if not home.database.is_file():
        return []
    mark_lost_runs(home)
    recent = time.time() - WIND_DOWN_S  # an old pid may belong to another process by now
    return [
        r
        for r in RunStore(home.database).list_runs(limit=200)
        if not BACKENDS[r.backend].remote
        and (not r.finished or (r.status == "cancelled" and r.updated > recent and r.pid and _alive(r.pid)))
    ]


def follow_log(
    home: PipelineHome,
    run_id: str,
    out: TextIO,
    *,
    from_start: bool = True,
    poll_s: float = 0.2,
    should_stop: Callable[[], bool] = lambda: False,
) -> RunRecord:
    """Print the run's log as it grows until the run finishes (or should_stop says so); return the record."""
    records = RunStore(home.database)
    record = records.get(run_id)
    log_path = Path(record.run_dir) / "run.log"
    position = 0 if from_start else (log_path.stat().st_size if log_path.exists() else 0)
    while True:
        if log_path.exists():
            with open(log_path, encoding="utf-8", errors="replace") as handle:
                handle.seek(position)
                chunk = handle.read()
                position = handle.tell()
            if chunk:
                out.write(chunk)
                out.flush()
        record = records.get(record.id)
        if record.finished and (not record.pid or not _alive(record.pid)):
            # one last read: the worker may have written its final line just before exiting
            if log_path.exists() and log_path.stat().st_size > position:
                with open(log_path, encoding="utf-8", errors="replace") as handle:
                    handle.seek(position)
                    out.write(handle.read())
            return record
        if should_stop():
            return record
        if record.pid and not _alive(record.pid) and not record.finished:
            mark_lost_runs(home)
        time.sleep(poll_s)
