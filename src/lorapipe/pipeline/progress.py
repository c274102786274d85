"""A run's training progress read from its folder: steps, losses, learning rate, ETA, checkpoints, sample images.

Everything comes from files the run writes anyway (the trainer's `step=N loss=... lr=...` lines and tqdm bar in
``run.log``, the LoRA files and ``sample/`` images in ``train/``), so any reader (the studio, a script) follows a
run started by any client without talking to its process. `ProgressReader` reads the log incrementally: following
a long run costs the bytes written since the last look, not the whole file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from lorapipe.evaluate.checkpoints import checkpoint_position
from lorapipe.pipeline.artifact import IMAGE_SUFFIXES, SAMPLE_DIR, summary_lora_name

# `step=12 loss=0.123456 lr=0.0001 epoch=1` (lorapipe.train.report), at the start of a line or after a \r.
_STEP_LINE = re.compile(r"^step=(\d+) loss=(\S+) lr=(\S+) epoch=(\d+)")
# tqdm's bar: `steps:  50%|#####     | 4/8 [00:01<00:02,  2.50step/s, ...]` (remaining may be `?`).
_BAR = re.compile(r"^steps:.*?\|\s*(\d+)/(\d+) \[([\d:]+)<([\d:?]+)")
# sd-scripts' sample image names: `NAME_000004_00_<stamp>_<seed>.png` (step) or `NAME_e000001_00_...` (epoch).
_SAMPLE_NAME = re.compile(r"_(e?)(\d{6})_(\d{2})_\d{14}(?:_-?\d+)?$")
_MAX_POINTS = 2000  # loss points kept for a chart; longer runs keep every k-th


def _seconds(clock: str) -> float | None:
    if "?" in clock:
        return None
    total = 0.0
    for part in clock.split(":"):
        total = total * 60 + float(part)
    return total


@dataclass(frozen=True)
class Checkpoint:
    """One LoRA file of a run: a step file, an epoch file or the final file, with its sample images."""

    name: str  # file name inside the run's train/ folder
    step: int | None
    epoch: int | None
    final: bool
    size: int
    samples: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "step": self.step,
            "epoch": self.epoch,
            "final": self.final,
            "size": self.size,
            "samples": list(self.samples),
        }


@dataclass
class ProgressReader:
    """Incremental reader of one run's log; call `update()` and read the fields."""

    log_path: Path
    position: int = 0
    step: int = 0
    total_steps: int | None = None
    epoch: int | None = None
    loss: float | None = None
    lr: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    _partial: str = ""

    def update(self) -> bool:
        """Read what the log gained since the last call; True when anything new was read."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(self.position)
                chunk = handle.read()
        except FileNotFoundError:
            return False
        if not chunk:
            return False
        self.position += len(chunk)
        text = self._partial + chunk.decode("utf-8", errors="replace")
        lines = text.split("\n")
        self._partial = lines.pop()  # a line still being written waits for its newline
        for line in lines:
            for segment in line.split("\r"):
                self._read_segment(segment.strip())
        return True

    def _read_segment(self, segment: str) -> None:
        match = _STEP_LINE.match(segment)
        if match:
            step, loss, lr, epoch = int(match[1]), float(match[2]), float(match[3]), int(match[4])
            self.step, self.loss, self.lr, self.epoch = step, loss, lr, epoch
            self.losses.append((step, loss))
            if len(self.losses) > _MAX_POINTS:
                self.losses = self.losses[::2]
            return
        match = _BAR.match(segment)
        if match:
            self.total_steps = int(match[2])
            self.elapsed_s = _seconds(match[3])
            self.eta_s = _seconds(match[4])
            self.step = max(self.step, int(match[1]))

    def to_json(self) -> dict:
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": self.epoch,
            "loss": self.loss,
            "lr": self.lr,
            "elapsed_s": self.elapsed_s,
            "eta_s": self.eta_s,
            "losses": [[step, loss] for step, loss in self.losses],
        }


def _checkpoint_position(stem: str, final_stem: str | None) -> tuple[int | None, int | None]:
    """(step, epoch) from sd-scripts' checkpoint names; the file the summary names as final has neither."""
    return (None, None) if stem == final_stem else checkpoint_position(stem)


def list_samples(train_dir: Path) -> list[str]:
    """Sample image names (relative to the train folder), oldest step first."""
    folder = Path(train_dir) / SAMPLE_DIR
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(names, key=lambda name: (_sample_key(name), name))


def _sample_key(name: str) -> tuple[int, int]:
    match = _SAMPLE_NAME.search(Path(name).stem)
    if not match:
        return (1 << 30, 0)
    return (int(match[2]) if not match[1] else (1 << 29) + int(match[2]), int(match[3]))


def list_checkpoints(train_dir: Path, *, final_steps: int | None = None) -> list[Checkpoint]:
    """The LoRA files in a run's train/ folder with the samples rendered at their step or epoch.

    The final file (no step/epoch suffix) gets the samples of `final_steps` when given, else the last ones.
    """
    folder = Path(train_dir)
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    named = summary_lora_name(folder)
    final_stem = Path(named).stem if named else None
    samples = list_samples(folder)
    by_step: dict[int, list[str]] = {}
    by_epoch: dict[int, list[str]] = {}
    for name in samples:
        match = _SAMPLE_NAME.search(Path(name).stem)
        if match:
            (by_epoch if match[1] else by_step).setdefault(int(match[2]), []).append(f"{SAMPLE_DIR}/{name}")
    checkpoints = []
    for path in files:
        step, epoch = _checkpoint_position(path.stem, final_stem)
        final = step is None and epoch is None
        if final:
            step = final_steps
        shown = by_step.get(step, []) if step is not None else by_epoch.get(epoch, [])
        if final and not shown and samples:
            last_step = max(by_step) if by_step else None
            shown = by_step.get(last_step, []) if last_step is not None else []
        checkpoints.append(Checkpoint(path.name, step, epoch, final, path.stat().st_size, tuple(shown)))
    return sorted(checkpoints, key=lambda c: (c.final, c.step or 0, c.epoch or 0))
