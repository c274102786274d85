"""The LoRA files of one training run, found by sd-scripts' names and checked to belong together.

A run writes `NAME-000001.safetensors` (epochs), `NAME-step00000500.safetensors` (steps) and `NAME.safetensors`
(the final file). Files of one run share the network, seed and dataset (`ss_network_*`, `ss_seed`,
`ss_dataset_dirs`) and the base model (`ss_sd_model_name` / `ss_new_sd_model_hash`); comparing checkpoints of
different runs or base models would make the curves meaningless, so they are refused. `ss_session_id` is not
compared: sd-scripts draws a new one per process, so the files of a resumed run differ in it. Only headers are read
(no torch).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from lorapipe.errors import EvaluationError, ModelLoadError
from lorapipe.safetensors_header import read_header

LORA_SUFFIX = ".safetensors"
BASE_LABEL = "no LoRA"
_EPOCH = re.compile(r"^(?P<name>.+)-(?P<epoch>\d{6})$")
_STEP = re.compile(r"^(?P<name>.+)-step(?P<step>\d{8})$")
# Keys that must agree between the files of one run (sd-scripts writes them into every save).
_SAME_RUN_KEYS = ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_seed", "ss_dataset_dirs")
_SAME_BASE_KEYS = ("ss_new_sd_model_hash", "ss_sd_model_name", "ss_base_model_version")


@dataclass(frozen=True)
class Checkpoint:
    """One LoRA file of a run, or the base model alone (`path` None)."""

    label: str  # the file stem (the LoRA's registry key), or BASE_LABEL
    path: Path | None
    kind: str  # "base" | "epoch" | "step" | "final"
    step: int | None  # training step it was saved at (ss_steps), None when unknown
    epoch: int | None
    metadata: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def is_base(self) -> bool:
        return self.path is None


BASE = Checkpoint(label=BASE_LABEL, path=None, kind="base", step=0, epoch=0)


@dataclass(frozen=True)
class RunCheckpoints:
    """The checkpoints of one run in training order (the final file last)."""

    folder: Path
    output_name: str
    checkpoints: tuple[Checkpoint, ...]

    @property
    def final(self) -> Checkpoint:
        return self.checkpoints[-1]


def find_checkpoints(run: Path) -> RunCheckpoints:
    """The checkpoints of the run in `run` (its folder, or any of its LoRA files); raises EvaluationError."""
    run = Path(run)
    if run.is_file():
        if run.suffix != LORA_SUFFIX:
            raise EvaluationError(f"{run}: not a .safetensors LoRA; pass a run's output folder or one of its LoRAs")
        folder, wanted = run.parent, _output_name(run.stem)
    elif run.is_dir():
        folder, wanted = run, None
    else:
        raise EvaluationError(f"{run}: no such file or folder; pass a training run's output folder")
    files = sorted(p for p in folder.glob(f"*{LORA_SUFFIX}") if p.is_file())
    if wanted is not None:
        files = [p for p in files if _output_name(p.stem) == wanted]
    if not files:
        raise EvaluationError(
            f"{folder}: no LoRA checkpoints (*.safetensors) here; pass the folder `train` wrote (--output-dir)"
        )
    names = sorted({_output_name(p.stem) for p in files})
    if len(names) > 1:
        raise EvaluationError(
            f"{folder}: LoRAs of several runs ({', '.join(names)}); pass one of the files to pick "
            "its run, or keep one run per folder"
        )
    checkpoints = sorted((_read(p) for p in files), key=_training_order)
    _check_same(checkpoints, _SAME_RUN_KEYS, "come from different training runs")
    _check_same(checkpoints, _SAME_BASE_KEYS, "were trained on different base models")
    return RunCheckpoints(folder=folder, output_name=names[0], checkpoints=tuple(checkpoints))


def checkpoint_position(stem: str) -> tuple[int | None, int | None]:
    """(step, epoch) a checkpoint's file name carries (`NAME-step00000500`, `NAME-000001`); (None, None) else."""
    step_match, epoch_match = _STEP.match(stem), _EPOCH.match(stem)
    if step_match:
        return int(step_match["step"]), None
    return None, int(epoch_match["epoch"]) if epoch_match else None


def _output_name(stem: str) -> str:
    for pattern in (_STEP, _EPOCH):
        match = pattern.match(stem)
        if match:
            return match["name"]
    return stem


def _read(path: Path) -> Checkpoint:
    try:
        header = read_header(path, remedy="re-copy the file or move it out of the run folder")
    except ModelLoadError as exc:
        raise EvaluationError(str(exc)) from exc
    meta = dict(header.metadata)
    if not any(name.startswith(("lora_unet_", "lora_te")) for name in header.tensors):
        raise EvaluationError(
            f"{path}: holds no Kohya LoRA tensors (lora_unet_*/lora_te*); is it a base model or "
            "another kind of file? Move it out of the run folder"
        )
    stem = path.stem
    named_step, named_epoch = checkpoint_position(stem)
    kind = "step" if named_step is not None else "epoch" if named_epoch is not None else "final"
    step = _int(meta.get("ss_steps"))
    if step is None:
        step = named_step
    epoch = _int(meta.get("ss_epoch"))
    if epoch is None:
        epoch = named_epoch
    return Checkpoint(label=stem, path=path, kind=kind, step=step, epoch=epoch, metadata=meta)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "", "None") else None
    except ValueError:
        return None


def _training_order(checkpoint: Checkpoint) -> tuple:
    final = checkpoint.kind == "final"
    return (final, checkpoint.step if checkpoint.step is not None else -1, checkpoint.epoch or 0, checkpoint.label)


def _check_same(checkpoints: list[Checkpoint], keys: tuple[str, ...], what: str) -> None:
    for key in keys:
        values = {c.metadata.get(key) for c in checkpoints if c.metadata.get(key) not in (None, "", "None")}
        if len(values) > 1:
            files = ", ".join(f"{c.path.name} ({key}={c.metadata.get(key)})" for c in checkpoints)
            raise EvaluationError(
                f"{checkpoints[0].path.parent}: checkpoints {what}: {files}; evaluate one run at "
                "a time (move the other files away)"
            )
