"""`train_summary.json` beside the LoRA: config, dataset hash, steps, final loss, timings, peak memory."""

from __future__ import annotations

import json
import resource
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lorapipe.atomic import atomic_write_text
from lorapipe.file_names import TRAIN_SUMMARY_NAME


def peak_memory_bytes(device_type: str) -> dict[str, int]:
    """Peak resident memory of this process and, on CUDA, peak allocated GPU memory."""
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_bytes": int(rss if sys.platform == "darwin" else rss * 1024)}
    if device_type == "cuda" and torch.cuda.is_available():
        out["peak_gpu_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


@dataclass(frozen=True)
class TrainSummary:
    """Everything a person or the pipeline wants to know about a finished (or stopped) run."""

    status: str  # "finished" | "interrupted"
    lora_file: str | None
    output_name: str
    dataset_hash: str
    total_steps: int
    steps_done: int
    epochs: int
    batches_per_epoch: int
    final_loss: float | None
    average_loss: float | None
    seconds_model_load: float
    seconds_caching: float
    seconds_training: float
    steps_per_second: float | None
    steps_per_second_steady: float | None
    memory: dict[str, int]
    device: str
    saved_files: list[str] = field(default_factory=list)
    sample_images: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seed: int | None = None
    seconds_per_epoch: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    state_folder: str | None = None
    num_validation_images: int = 0
    validation_losses: list[dict[str, Any]] = field(default_factory=list)  # {"step", "epoch", "loss"}
    config: dict[str, Any] = field(default_factory=dict)


def write_summary(output_dir: Path, summary: TrainSummary) -> Path:
    """Atomic write of `train_summary.json`."""
    path = Path(output_dir) / TRAIN_SUMMARY_NAME
    atomic_write_text(path, json.dumps(asdict(summary), indent=2, default=str))
    return path
