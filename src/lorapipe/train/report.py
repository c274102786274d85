"""What a run reports: while it trains, a tqdm bar (loss, lr, it/s, ETA), one `step=... loss=... lr=...` line per
step for log scrapers (SageMaker MetricDefinitions) and tracker scalars (TensorBoard when logging_dir is set, wandb
with log_with = "wandb"; `trackers.py`); when it ends, `train_summary.json` beside the LoRA (config, dataset hash,
steps, losses, timings, peak memory)."""

from __future__ import annotations

import json
import resource
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lorapipe.atomic import atomic_write_text
from lorapipe.file_names import TRAIN_SUMMARY_NAME
from lorapipe.train.trackers import open_tracker


class Progress:
    """Owns the bar, the step lines and the TensorBoard writer of one run."""

    def __init__(
        self,
        total_steps: int,
        *,
        initial_step: int = 0,
        logging_dir: str | None = None,
        log_prefix: str | None = None,
        log_with: str | None = None,
        config: dict | None = None,
        show_bar: bool = True,
        step_lines: bool = True,
        stream=None,
    ):
        self._stream = stream or sys.stderr
        self._step_lines = step_lines
        self._bar = tqdm(
            total=total_steps,
            initial=initial_step,
            desc="steps",
            unit="step",
            smoothing=0.1,
            disable=not show_bar,
            file=self._stream,
            dynamic_ncols=True,
        )
        self._writer = None
        if logging_dir:
            self._writer = open_tracker(log_with, logging_dir, log_prefix=log_prefix, config=config)

    def step(
        self, step: int, *, loss: float, avg_loss: float, lrs: dict[str, float], epoch: int, max_norm=None
    ) -> None:
        """`max_norm`: scale_weight_norms' MaxNormReport for this step (shown and logged as sd-scripts does)."""
        main_lr = next(iter(lrs.values())) if lrs else 0.0
        postfix = {"loss": f"{loss:.4f}", "avg": f"{avg_loss:.4f}", "lr": f"{main_lr:.2e}"}
        if max_norm is not None:
            postfix.update({"keys scaled": max_norm.keys_scaled, "avg key norm": f"{max_norm.average_key_norm:.3g}"})
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1)
        if self._step_lines:
            # One parseable line per step; printed through tqdm so it does not tear the bar.
            self._bar.write(f"step={step} loss={loss:.6f} lr={main_lr:.6g} epoch={epoch}", file=sys.stdout)
        if self._writer is not None:
            self._writer.add_scalar("loss/current", loss, step)
            self._writer.add_scalar("loss/average", avg_loss, step)
            for name, lr in lrs.items():
                self._writer.add_scalar(f"lr/{name}", lr, step)
            for name, value in max_norm.logs().items() if max_norm is not None else ():
                self._writer.add_scalar(name, value, step)

    def validation(self, step: int, loss: float, *, epoch: int | None = None) -> None:
        """A validation loss: one parseable line, and TensorBoard (sd-scripts' tag names)."""
        if self._step_lines:
            where = f" epoch={epoch}" if epoch is not None else ""
            self._bar.write(f"validation step={step}{where} loss={loss:.6f}", file=sys.stdout)
        if self._writer is not None:
            if epoch is None:
                self._writer.add_scalar("loss/validation/step_current", loss, step)
            else:
                self._writer.add_scalar("loss/validation/epoch_average", loss, epoch)

    def epoch_end(self, epoch: int, avg_loss: float) -> None:
        if self._writer is not None:
            self._writer.add_scalar("loss/epoch", avg_loss, epoch)

    def note(self, text: str) -> None:
        self._bar.write(text, file=self._stream)

    def close(self) -> None:
        self._bar.close()
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()


# ---- train_summary.json -------------------------------------------------------------------------------------------


def peak_memory_bytes(device_type: str) -> dict[str, int]:
    """Peak resident memory of this process and, on CUDA, peak allocated GPU memory."""
    import torch  # the one torch use here: this module stays importable without it

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


def steady_rate(times: list[float], warmup: int = 3) -> float | None:
    """Steps per second after the first `warmup` steps (caches filling, compilation, allocator warm-up)."""
    if len(times) <= warmup + 1:
        return None
    return round((len(times) - 1 - warmup) / (times[-1] - times[warmup]), 4)
