"""`network_args` and `optimizer_args`: lists of "key=value" strings, read as networks.lora / sd-scripts read them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lorapipe.config import keys as k
from lorapipe.config.model import NetworkOptions
from lorapipe.config.values import ValueProblem

# SDXL's UNet in SGM order: time/label embedding, 9 input blocks, 3 middle, 9 output, out (sd-scripts' layout).
SDXL_BLOCK_COUNT = 23
_BLOCK_LISTS: dict[str, type] = {
    "block_dims": int,
    "block_alphas": float,
    "conv_block_dims": int,
    "conv_block_alphas": float,
}
_LORAPLUS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")


@dataclass(frozen=True)
class NetworkArgs:
    """What lorapipe takes from network_args: conv LoRA rank/alpha (None = off), the other networks.lora
    arguments (`options`), plus problems found."""

    conv_dim: int | None = None
    conv_alpha: float | None = None
    dropout: float | None = None
    options: NetworkOptions = NetworkOptions()
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
    """Every networks.lora argument lorapipe implements, validated; the last value of a repeated key wins (as the
    dict sd-scripts builds). conv_alpha defaults to 1 when only conv_dim is set."""
    try:
        pairs = split_pairs(items)
    except ValueProblem as problem:
        return NetworkArgs(errors=(str(problem),))
    reader = _Reader()
    for key, value in dict(pairs).items():
        reader.read(key, value)
    conv_dim, conv_alpha = reader.conv()
    return NetworkArgs(
        conv_dim,
        conv_alpha,
        reader.numbers.get("dropout"),
        reader.options(),
        tuple(reader.errors),
        tuple(reader.warnings),
    )


class _Reader:
    """Collects parsed values and problems for one network_args list."""

    def __init__(self) -> None:
        self.numbers: dict[str, float] = {}
        self.lists: dict[str, tuple] = {}
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def read(self, key: str, value: str) -> None:
        if key in k.NETWORK_ARGS_REJECTED:
            self.errors.append(
                f"{key}={value}: block-wise learning-rate weights are not implemented by lorapipe; "
                f"remove it (block_dims/block_alphas set per-block ranks instead)"
            )
        elif key in _BLOCK_LISTS:
            self._block_list(key, value)
        elif key in k.NETWORK_ARGS_SUPPORTED:
            self._number(key, value)
        else:
            self.warnings.append(f"{key}={value}: networks.lora does not know this argument and ignores it")

    def _number(self, key: str, value: str) -> None:
        try:
            number = float(value)
        except ValueError:
            self.errors.append(f"{key}={value!r} is not a number")
            return
        check = _NUMBER_RULES.get(key)
        problem = check(number) if check else None
        if problem:
            self.errors.append(f"{key}={value} {problem}")
        else:
            self.numbers[key] = number

    def _block_list(self, key: str, value: str) -> None:
        kind = _BLOCK_LISTS[key]
        try:
            parsed = tuple(kind(part.strip()) for part in value.split(","))
        except ValueError:
            what = "whole numbers" if kind is int else "numbers"
            self.errors.append(f"{key}={value!r} must be {SDXL_BLOCK_COUNT} comma-separated {what}")
            return
        if len(parsed) != SDXL_BLOCK_COUNT:
            self.errors.append(
                f"{key}: {len(parsed)} values given; SDXL's UNet has {SDXL_BLOCK_COUNT} blocks "
                f"(embedding, 9 input, 3 middle, 9 output, out), one value each"
            )
        elif any(v < 0 for v in parsed):
            self.errors.append(f"{key}={value}: values must be 0 or more (0 leaves that block out)")
        else:
            self.lists[key] = parsed

    def conv(self) -> tuple[int | None, float | None]:
        conv_dim = self.numbers.get("conv_dim")
        conv_alpha = self.numbers.get("conv_alpha")
        if conv_dim is None or conv_dim == 0:
            if conv_alpha is not None and "conv_block_dims" not in self.lists:
                self.warnings.append("conv_alpha without conv_dim adds no conv LoRA (networks.lora needs conv_dim)")
            return None, None
        return int(conv_dim), 1.0 if conv_alpha is None else conv_alpha

    def options(self) -> NetworkOptions:
        lists = dict(self.lists)
        if "block_dims" not in lists:
            # sd-scripts turns block-wise ranks on only through block_dims (or the lr weights lorapipe refuses).
            for key in [key for key in lists if key != "block_dims"]:
                self.warnings.append(f"{key} is ignored without block_dims (as in sd-scripts); add block_dims")
                lists.pop(key)
        ratio = self.numbers.get("loraplus_lr_ratio")
        unet_ratio = self.numbers.get("loraplus_unet_lr_ratio", ratio)
        te_ratio = self.numbers.get("loraplus_text_encoder_lr_ratio", ratio)
        return NetworkOptions(
            rank_dropout=self.numbers.get("rank_dropout"),
            module_dropout=self.numbers.get("module_dropout"),
            block_dims=lists.get("block_dims"),
            block_alphas=lists.get("block_alphas"),
            conv_block_dims=lists.get("conv_block_dims"),
            conv_block_alphas=lists.get("conv_block_alphas"),
            loraplus_unet_lr_ratio=unet_ratio,
            loraplus_text_encoder_lr_ratio=te_ratio,
        )


def _whole(number: float) -> str | None:
    return None if number == int(number) and number >= 0 else "must be a whole number of 0 or more"


def _not_negative(number: float) -> str | None:
    return None if number >= 0 else "must be 0 or more"


def _probability(number: float) -> str | None:
    return None if 0 <= number < 1 else "must be at least 0 and below 1 (a dropout probability)"


def _ratio(number: float) -> str | None:
    return (
        None
        if number > 0
        else ("must be above 0 (LoRA+ multiplies the lora_up learning rate by it); remove it to train without LoRA+")
    )


_NUMBER_RULES: dict[str, Callable[[float], str | None]] = {
    "conv_dim": _whole,
    "conv_alpha": _not_negative,
    "dropout": _not_negative,
    "rank_dropout": _probability,
    "module_dropout": _probability,
    **{key: _ratio for key in _LORAPLUS},
}
