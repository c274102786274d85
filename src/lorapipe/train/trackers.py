"""Where a run's scalars go: TensorBoard under `logging_dir` (sd-scripts' default tracker) or, with
`log_with = "wandb"`, an offline wandb run beside it (`wandb sync <folder>` uploads it later; no account or network is
needed while training). Both answer `add_scalar(tag, value, step)`, `flush()` and `close()`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

WANDB_PROJECT = "lorapipe"


def run_name(log_prefix: str | None) -> str:
    """sd-scripts names tracker runs `<log_prefix><timestamp>`."""
    return f"{log_prefix or ''}{time.strftime('%Y%m%d%H%M%S')}"


def open_tracker(
    log_with: str | None,
    logging_dir: str | Path,
    *,
    log_prefix: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> Any:
    """A scalar writer for `log_with` ("tensorboard", the default, or "wandb")."""
    name = run_name(log_prefix)
    if log_with == "wandb":
        return WandbWriter(Path(logging_dir), name, dict(config or {}))
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(Path(logging_dir) / name))


class WandbWriter:
    """An offline wandb run with TensorBoard's writer methods; epoch scalars get `epoch` as their x axis."""

    def __init__(self, folder: Path, name: str, config: dict[str, Any]):
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=WANDB_PROJECT, name=name, dir=str(folder), mode="offline", config=config, reinit="create_new"
        )
        self._run.define_metric("global_step")
        self._run.define_metric("epoch")
        self._run.define_metric("*", step_metric="global_step")
        self._run.define_metric("loss/epoch", step_metric="epoch")
        self._run.define_metric("loss/validation/epoch_average", step_metric="epoch")

    @property
    def folder(self) -> Path:
        return Path(self._run.dir).parent

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        axis = "epoch" if tag in ("loss/epoch", "loss/validation/epoch_average") else "global_step"
        self._run.log({tag: float(value), axis: step})

    def flush(self) -> None:
        """wandb writes as it logs; nothing is held back."""

    def close(self) -> None:
        self._run.finish()
