"""Rank and alpha of each wrapped module, including sd-scripts' block-wise `network_args`.

`block_dims` / `block_alphas` / `conv_block_dims` / `conv_block_alphas` hold one value per UNet block in SGM order:
index 0 = time/label embedding, then every `input_blocks.i`, the three `middle_block.j`, every `output_blocks.i`,
and last `out` (23 values on SDXL). Linear and 1x1 modules take `block_dims`, 3x3 convs `conv_block_dims`; rank 0
leaves the module out. Text-encoder modules always use network_dim/network_alpha.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lorapipe.errors import ConfigError
from lorapipe.lora.targets import KohyaTargets

_BLOCK = re.compile(r"^lora_unet_(input_blocks|middle_block|output_blocks)_(\d+)_")


@dataclass(frozen=True)
class BlockRanks:
    """Block-wise ranks/alphas as given in network_args (None = not given)."""

    dims: tuple[int, ...] | None = None
    alphas: tuple[float, ...] | None = None
    conv_dims: tuple[int, ...] | None = None
    conv_alphas: tuple[float, ...] | None = None

    @classmethod
    def parse(
        cls,
        block_dims: Any = None,
        block_alphas: Any = None,
        conv_block_dims: Any = None,
        conv_block_alphas: Any = None,
    ) -> BlockRanks:
        """Accept sd-scripts' comma-separated strings or sequences."""
        return cls(
            _values("block_dims", block_dims, int),
            _values("block_alphas", block_alphas, float),
            _values("conv_block_dims", conv_block_dims, int),
            _values("conv_block_alphas", conv_block_alphas, float),
        )

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.dims, self.alphas, self.conv_dims, self.conv_alphas))


@dataclass(frozen=True)
class UnetBlocks:
    """How many SGM blocks the UNet has (derived from its config, so the tiny model follows SDXL's layout)."""

    num_input_blocks: int
    num_output_blocks: int

    @classmethod
    def from_config(cls, config: Any) -> UnetBlocks:
        per_level = int(config["layers_per_block"]) + 1
        levels = len(config["down_block_types"])
        return cls(num_input_blocks=levels * per_level, num_output_blocks=levels * per_level)

    @property
    def count(self) -> int:
        return 1 + self.num_input_blocks + 3 + self.num_output_blocks + 1

    def index(self, kohya_name: str) -> int:
        match = _BLOCK.match(kohya_name)
        if not match:
            raise ConfigError(f"{kohya_name}: not inside an SGM block; block_dims cannot apply to it")
        group, number = match.group(1), int(match.group(2))
        if group == "input_blocks":
            return 1 + number
        if group == "middle_block":
            return 1 + self.num_input_blocks + number
        return 1 + self.num_input_blocks + 3 + number


def plan_ranks(
    targets: KohyaTargets,
    *,
    dim: int,
    alpha: float,
    conv_dim: int | None,
    conv_alpha: float | None,
    blocks: BlockRanks,
    unet_blocks: UnetBlocks | None,
) -> dict[str, tuple[int, float]]:
    """kohya_name -> (rank, alpha); rank 0 means sd-scripts would not create that module."""
    plan: dict[str, tuple[int, float]] = {}
    has_unet = bool(targets.unet)  # text-encoder-only training ignores block-wise UNet ranks, as sd-scripts
    per_block = _per_block(blocks, unet_blocks, dim, alpha, conv_dim, conv_alpha) if blocks.any and has_unet else None
    for target in targets:
        if per_block is None or target.part != "unet":
            plan[target.kohya_name] = (conv_dim, conv_alpha) if target.uses_conv_dim else (dim, alpha)
            continue
        index = unet_blocks.index(target.kohya_name)
        dims, alphas, conv_dims, conv_alphas = per_block
        if target.uses_conv_dim:
            plan[target.kohya_name] = (conv_dims[index], conv_alphas[index]) if conv_dims else (0, 0.0)
        else:
            plan[target.kohya_name] = (dims[index], alphas[index])
    return {name: (int(rank), _alpha_or_rank(a, rank)) for name, (rank, a) in plan.items()}


def _per_block(
    blocks: BlockRanks,
    unet_blocks: UnetBlocks | None,
    dim: int,
    alpha: float,
    conv_dim: int | None,
    conv_alpha: float | None,
) -> tuple[Any, Any, Any, Any]:
    """sd-scripts `get_block_dims_and_alphas`: fill what is not given from the network-wide values."""
    if unet_blocks is None:
        raise ConfigError("network_args block_dims: needs the UNet (not with network_train_text_encoder_only)")
    n = unet_blocks.count
    for key, values in (
        ("block_dims", blocks.dims),
        ("block_alphas", blocks.alphas),
        ("conv_block_dims", blocks.conv_dims),
        ("conv_block_alphas", blocks.conv_alphas),
    ):
        if values is not None and len(values) != n:
            raise ConfigError(
                f"network_args {key}: {len(values)} values given; this UNet has {n} blocks "
                f"(embedding, {unet_blocks.num_input_blocks} input, 3 middle, "
                f"{unet_blocks.num_output_blocks} output, out)"
            )
    dims = blocks.dims or (dim,) * n
    alphas = blocks.alphas or (alpha,) * n
    if blocks.conv_dims is not None:
        conv_dims = blocks.conv_dims
        conv_alphas = blocks.conv_alphas or (1.0 if conv_alpha is None else conv_alpha,) * n
    elif conv_dim is not None:
        conv_dims, conv_alphas = (conv_dim,) * n, (conv_alpha,) * n
    else:
        conv_dims = conv_alphas = None
    return dims, alphas, conv_dims, conv_alphas


def _alpha_or_rank(alpha: float | None, rank: int) -> float:
    """sd-scripts: alpha None or 0 means alpha = rank."""
    return float(rank) if alpha is None or float(alpha) == 0 else float(alpha)


def _values(key: str, value: Any, kind: type) -> tuple | None:
    if value is None or value == "":
        return None
    items: Sequence[Any] = value.split(",") if isinstance(value, str) else value
    try:
        parsed = tuple(kind(str(v).strip()) for v in items)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"network_args {key}: {value!r} is not a comma-separated list of numbers") from exc
    if any(v < 0 for v in parsed):
        raise ConfigError(f"network_args {key}: values must be 0 or more, got {value!r}")
    return parsed
