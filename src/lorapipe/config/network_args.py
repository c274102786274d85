"""`network_args` and `optimizer_args`: lists of "key=value" strings, read as networks.lora / sd-scripts read them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lorapipe.config import keys as k
from lorapipe.config.values import ValueProblem


@dataclass(frozen=True)
class NetworkArgs:
    """What lorapipe takes from network_args: conv LoRA rank/alpha (None = off), plus problems found."""

    conv_dim: int | None = None
    conv_alpha: float | None = None
    dropout: float | None = None
    errors: tuple[str, ...] = field(default=())
    warnings: tuple[str, ...] = field(default=())


def split_pairs(items: Sequence[str]) -> list[tuple[str, str]]:
    """`["a=1", "b = x"]` -> `[("a", "1"), ("b", "x")]`; an item without "=" is a ValueProblem."""
    pairs = []
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueProblem(f"item {item!r} is not key=value")
        pairs.append((key.strip(), value.strip().strip("\"'")))
    return pairs


def parse_optimizer_args(items: Sequence[str]) -> dict[str, str]:
    """Only the shape is checked here; the trainer turns values into Python literals as sd-scripts does."""
    return dict(split_pairs(items))


def parse_network_args(items: Sequence[str]) -> NetworkArgs:
    """conv_dim / conv_alpha as networks.lora reads them (conv_alpha defaults to 1 when only conv_dim is set)."""
    try:
        pairs = split_pairs(items)
    except ValueProblem as problem:
        return NetworkArgs(errors=(str(problem),))
    errors: list[str] = []
    warnings: list[str] = []
    values: dict[str, float] = {}
    for key, value in pairs:
        if key in k.NETWORK_ARGS_REJECTED:
            errors.append(f"{key}={value}: not implemented by lorapipe (only conv_dim and conv_alpha are); remove it")
        elif key in k.NETWORK_ARGS_SUPPORTED:
            try:
                values[key] = float(value)
            except ValueError:
                errors.append(f"{key}={value!r} is not a number")
        else:
            warnings.append(f"{key}={value}: networks.lora does not know this argument and ignores it")
    conv_dim = values.get("conv_dim")
    conv_alpha = values.get("conv_alpha")
    if conv_dim is not None and (conv_dim != int(conv_dim) or conv_dim < 0):
        errors.append(f"conv_dim={conv_dim} must be a whole number of 0 or more")
        conv_dim = None
    if conv_alpha is not None and conv_alpha < 0:
        errors.append(f"conv_alpha={conv_alpha} must be 0 or more")
    if conv_dim is None or conv_dim == 0:
        if conv_alpha is not None:
            warnings.append("conv_alpha without conv_dim adds no conv LoRA (networks.lora needs conv_dim)")
        return NetworkArgs(None, None, values.get("dropout"), tuple(errors), tuple(warnings))
    return NetworkArgs(int(conv_dim), 1.0 if conv_alpha is None else conv_alpha, values.get("dropout"),
                       tuple(errors), tuple(warnings))
