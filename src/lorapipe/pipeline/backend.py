"""The one small protocol every training backend implements, and the job it is handed."""

from __future__ import annotations

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
