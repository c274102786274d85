"""Local backend: the trainer's command line in a child process (one training process per GPU when several).

The trainer is a subprocess, never an import, so the pipeline stays torch-free and a crash in training cannot take
the run record down with it. Its output is streamed line by line into the run log.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from lorapipe.errors import PipelineError, TrainingError
from lorapipe.pipeline.backend import TrainJob
from lorapipe.pipeline.runlog import Cancellation, RunLog

# How long a cancelled trainer gets to write its checkpoint before it is killed (SageMaker grants 120 s).
STOP_GRACE_S = 120.0


def visible_gpu_count() -> int:
    """GPUs this process may use, without importing torch: CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


def trainer_command(job: TrainJob, gpus: int) -> list[str]:
    """The `lorapipe train` command line for this job; with several GPUs, `--processes N` trains one process per
    GPU, each on its share of the batches."""
    train_args = ["train", str(job.dataset_dir), "--output-dir", str(job.output_dir)]
    if job.base_model:
        train_args += ["--base-model", job.base_model]
    if job.config:
        train_args += ["--config", str(job.config)]
    if job.resume_from:
        train_args += ["--resume", str(job.resume_from)]
    for override in job.overrides:
        train_args += ["--set", override]
    if gpus > 1:
        train_args += ["--processes", str(gpus)]
    return [sys.executable, "-m", "lorapipe", *train_args]


class LocalBackend:
    name = "local"

    def __init__(self, gpus: int | None = None) -> None:
        self.gpus = visible_gpu_count() if gpus is None else gpus

    @classmethod
    def from_request(cls, request) -> LocalBackend:
        return cls()  # every local choice is in the job (dataset, config, overrides)

    def train(self, job: TrainJob, log: RunLog, cancel: Cancellation) -> Path:
        job.output_dir.mkdir(parents=True, exist_ok=True)
        command = trainer_command(job, self.gpus)
        log.info("train: " + " ".join(command[1:]))
        try:
            child = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        except OSError as exc:
            raise PipelineError(f"{command[0]}: cannot start the trainer ({exc.strerror}); check the install") from exc
        stopper = threading.Thread(target=_stop_when_cancelled, args=(child, cancel), daemon=True)
        stopper.start()
        assert child.stdout is not None
        for line in child.stdout:
            log.raw(line)
        code = child.wait()
        if cancel.requested:
            raise PipelineError("train: cancelled; the trainer saved its state where its config says")
        if code != 0:
            last = _last_error_line(log.tail(40))
            raise TrainingError(f"train: the trainer exited with code {code}: {last}; see `lorapipe runs logs`")
        return job.output_dir


def _stop_when_cancelled(child: subprocess.Popen, cancel: Cancellation) -> None:
    """Forward a cancel to the trainer as SIGTERM (it checkpoints), then SIGKILL after the grace period."""
    while child.poll() is None:
        if cancel.event.wait(0.5):
            break
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()


def _last_error_line(tail: str) -> str:
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower():
            return line[:300]
    return lines[-1][:300] if lines else "no output"
