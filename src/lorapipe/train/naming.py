"""sd-scripts' file and folder names and its save / prune cadence (sd-scripts library/train_util.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass

STATE_SUFFIX = "-state"


def epoch_name(output_name: str | None, epoch: int) -> str:
    """`NAME-000001` (epoch is 1-based, as in sd-scripts' files)."""
    return f"{output_name or 'epoch'}-{epoch:06d}"


def step_name(output_name: str | None, step: int) -> str:
    """`NAME-step00000500`."""
    return f"{output_name or 'at'}-step{step:08d}"


def last_name(output_name: str | None) -> str:
    """The final file: `NAME`."""
    return output_name or "last"


def sample_image_name(
    output_name: str | None,
    *,
    epoch: int | None,
    step: int,
    prompt_index: int,
    seed: int | None,
    when: float | None = None,
) -> str:
    """`NAME_e000001_00_20240101120000_42.png` (epoch trigger) or `NAME_000500_00_...png` (step trigger)."""
    counter = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(when if when is not None else time.time()))
    prefix = f"{output_name}_" if output_name else ""
    suffix = f"_{seed}" if seed is not None else ""
    return f"{prefix}{counter}_{prompt_index:02d}_{stamp}{suffix}.png"


@dataclass(frozen=True)
class SaveCadence:
    """When to write intermediate files and which older ones to delete."""

    save_every_n_epochs: int | None = None
    save_every_n_steps: int | None = None
    save_last_n_epochs: int | None = None
    save_last_n_steps: int | None = None
    save_last_n_epochs_state: int | None = None
    save_last_n_steps_state: int | None = None

    def saves_at_epoch_end(self, epoch: int, total_epochs: int) -> bool:
        """Epoch files only before the last epoch (the final file stands for the last one)."""
        n = self.save_every_n_epochs or 0
        return n > 0 and epoch % n == 0 and epoch < total_epochs

    def saves_at_step(self, step: int) -> bool:
        n = self.save_every_n_steps or 0
        return n > 0 and step % n == 0

    def epoch_to_remove(self, epoch: int, *, state: bool = False) -> int | None:
        """After saving epoch e, the epoch e - N*M file goes (keep M)."""
        keep = (self.save_last_n_epochs_state or self.save_last_n_epochs) if state else self.save_last_n_epochs
        n = self.save_every_n_epochs or 0
        if not keep or n <= 0:
            return None
        old = epoch - n * keep
        return old if old > 0 else None

    def step_to_remove(self, step: int, *, state: bool = False) -> int | None:
        """After saving step s, the file at (s - S - 1) floored to the save interval goes (keep the last S steps)."""
        keep = (self.save_last_n_steps_state or self.save_last_n_steps) if state else self.save_last_n_steps
        n = self.save_every_n_steps or 0
        if not keep or n <= 0:
            return None
        old = step - keep - 1
        old -= old % n
        return old if old > 0 else None
