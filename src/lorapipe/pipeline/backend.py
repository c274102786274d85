"""The one small protocol every training backend implements, the job it is handed, and the list of backends.

A new backend is a module with a class that has the `TrainBackend` protocol (`RemoteTrainBackend` when it trains
away from this machine) and a `from_request(request)` class method, plus a line in `BACKENDS`; the runner, the
request check, `runs cancel`, the studio and the CLI read everything else from its `BackendSpec`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lorapipe.pipeline.runlog import Cancellation, RunLog


@dataclass(frozen=True)
class TrainJob:
    """One training step: dataset in, artifact folder (LoRA + train_summary.json + sample/) out."""

    run_id: str
    dataset_dir: Path  # local copy (validated)
    dataset_url: str  # where the backend reads it: the given folder or s3:// prefix, or its uploaded copy
    output_dir: Path  # the run's train/ folder, filled by the backend
    base_model: str | None
    config: Path | None
    overrides: tuple[str, ...]
    cache_key: str = ""  # content hash of dataset + config + base model (names checkpoint locations)
    resume_from: Path | None = None  # a folder of training states left by an interrupted run of the same content


class TrainBackend(Protocol):
    name: str

    def train(self, job: TrainJob, log: RunLog, cancel: Cancellation) -> Path:
        """Run the job to the end and return the folder holding the LoRA; raise a LorapipeError on failure."""
        ...


class RemoteTrainBackend(TrainBackend, Protocol):
    """A backend whose `BackendSpec` says `remote=True`: its job outlives the worker, so it can be stopped alone."""

    def stop_run(self, run_id: str) -> str:
        """Stop the remote job of run `run_id` (its worker is gone); a line for the run log."""
        ...


@dataclass(frozen=True)
class BackendSpec:
    """How the pipeline reaches one backend. Its module is imported only when a run uses it (boto3 stays out of
    local runs)."""

    name: str
    factory: str  # "module:Class"; the class builds itself with `from_request(request)`
    # Trains away from this machine, reading and writing S3: --output must be s3:// (a local dataset is uploaded
    # there first), it leaves this machine's accelerator free, and cancelling a run whose worker is gone stops the
    # remote job (the class is a `RemoteTrainBackend`).
    remote: bool = False

    def from_request(self, request) -> TrainBackend:
        """The backend for `request` (a RunRequest; request.py imports this module, so it is not named here)."""
        module, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module), attr).from_request(request)


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec("local", "lorapipe.pipeline.local_backend:LocalBackend"),
        BackendSpec("sagemaker", "lorapipe.pipeline.sagemaker_backend:SageMakerBackend", remote=True),
    )
}
DEFAULT_BACKEND = "local"
