"""Kohya's `lr_scheduler` keys -> a torch LR scheduler (sd-scripts `get_scheduler_fix` semantics).

Warm-up given as a float (or any value < 1) is a fraction of the total steps, as in sd-scripts. `adafactor` (or
`adafactor:<lr>`) uses transformers' AdafactorSchedule, which reads the LR Adafactor computes itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from lorapipe.errors import ConfigError


@dataclass(frozen=True)
class ScheduleOptions:
    """The Kohya schedule keys (defaults = sd-scripts defaults)."""

    lr_scheduler: str = "constant"
    lr_warmup_steps: int | float = 0
    lr_decay_steps: int | float = 0
    lr_scheduler_num_cycles: int = 1
    lr_scheduler_power: float = 1.0
    lr_scheduler_min_lr_ratio: float | None = None
    lr_scheduler_timescale: int | None = None


def resolve_steps(value: int | float | None, total_steps: int) -> int:
    """sd-scripts: a float is a fraction of the total steps; an int is a step count."""
    if not value:
        return 0
    if isinstance(value, float):
        if not 0 <= value <= 1 and not value.is_integer():
            raise ConfigError(f"lr_warmup_steps: {value} is neither a step count nor a fraction in [0, 1]")
        return int(value * total_steps) if value <= 1 else int(value)
    return int(value)


def build_lr_scheduler(optimizer, options: ScheduleOptions, total_steps: int, *, adafactor_relative_step=False):
    """The scheduler stepped once per optimizer step (accumulation counted by the loop, not here)."""
    name = (options.lr_scheduler or "constant").lower()
    if name.startswith("adafactor") or adafactor_relative_step:
        from transformers.optimization import AdafactorSchedule

        initial_lr = float(name.split(":", 1)[1]) if ":" in name else 0.0
        return AdafactorSchedule(optimizer, initial_lr=initial_lr)
    from diffusers.optimization import get_scheduler
    from transformers.optimization import get_scheduler as hf_get_scheduler

    warmup = resolve_steps(options.lr_warmup_steps, total_steps)
    if name in ("constant", "constant_with_warmup") and warmup == 0:
        name = "constant"
    if name == "constant" and warmup:
        name = "constant_with_warmup"  # sd-scripts applies warm-up to "constant" too
    if name in ("inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay"):
        extra = {}
        if name == "inverse_sqrt" and options.lr_scheduler_timescale:
            extra["timescale"] = options.lr_scheduler_timescale
        if name == "cosine_with_min_lr":
            extra["min_lr_rate"] = options.lr_scheduler_min_lr_ratio or 0.0
        if name == "warmup_stable_decay":
            extra["num_decay_steps"] = resolve_steps(options.lr_decay_steps, total_steps)
            extra["min_lr_ratio"] = options.lr_scheduler_min_lr_ratio or 0.0
        return hf_get_scheduler(
            name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps, scheduler_specific_kwargs=extra
        )
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=total_steps,
        num_cycles=int(options.lr_scheduler_num_cycles or 1),
        power=float(options.lr_scheduler_power or 1.0),
    )
