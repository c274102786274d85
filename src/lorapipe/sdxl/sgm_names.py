"""Map diffusers UNet module names to the original SGM (Stability generative-models) names.

Kohya LoRA keys and single-file checkpoints use the SGM layout (`input_blocks.4.1...`); diffusers uses
`down_blocks.1.attentions.0...`. The map is derived from the UNet config (layers per block, number of levels),
never hard-coded for one size, so the tiny and the full model follow the same rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

# Resnet sub-module names: diffusers -> SGM.
_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


class UnetNameMap:
    """Prefix map for one UNet config; `to_sgm("down_blocks.1.attentions.0.proj_in")` -> SGM name."""

    def __init__(self, config: Mapping[str, Any]):
        self.layers_per_block = int(config["layers_per_block"])
        self.num_levels = len(config["down_block_types"])
        self.up_has_attention = tuple("CrossAttn" in t for t in config["up_block_types"])
        self._prefixes = self._build_prefixes()

    def _build_prefixes(self) -> list[tuple[str, str]]:
        L = self.layers_per_block
        pairs: list[tuple[str, str]] = list(_TOP_LEVEL.items())
        for b in range(self.num_levels):
            for i in range(L):
                sgm = f"input_blocks.{1 + b * (L + 1) + i}"
                pairs.append((f"down_blocks.{b}.resnets.{i}", f"{sgm}.0"))
                pairs.append((f"down_blocks.{b}.attentions.{i}", f"{sgm}.1"))
            if b < self.num_levels - 1:
                pairs.append((f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{(b + 1) * (L + 1)}.0.op"))
        pairs += [
            ("mid_block.resnets.0", "middle_block.0"),
            ("mid_block.attentions.0", "middle_block.1"),
            ("mid_block.resnets.1", "middle_block.2"),
        ]
        for b in range(self.num_levels):
            for i in range(L + 1):
                sgm = f"output_blocks.{b * (L + 1) + i}"
                pairs.append((f"up_blocks.{b}.resnets.{i}", f"{sgm}.0"))
                pairs.append((f"up_blocks.{b}.attentions.{i}", f"{sgm}.1"))
            if b < self.num_levels - 1:
                slot = 2 if self.up_has_attention[b] else 1
                pairs.append((f"up_blocks.{b}.upsamplers.0", f"output_blocks.{b * (L + 1) + L}.{slot}"))
        # Longest prefix first so "down_blocks.1.resnets.1" never matches "down_blocks.1.resnets.10".
        return sorted(pairs, key=lambda p: -len(p[0]))

    def to_sgm(self, name: str) -> str:
        """Translate a diffusers module or parameter name into its SGM equivalent."""
        for prefix, sgm in self._prefixes:
            if name == prefix or name.startswith(prefix + "."):
                rest = name[len(prefix) :]
                if "resnets." in prefix:
                    rest = _rename_resnet_part(rest)
                return sgm + rest
        raise KeyError(f"no SGM name for UNet module {name!r}")

    def sgm_names(self, names: Sequence[str]) -> dict[str, str]:
        return {n: self.to_sgm(n) for n in names}


def _rename_resnet_part(rest: str) -> str:
    """`.norm1.weight` -> `.in_layers.0.weight` (rest starts with a dot)."""
    match = re.match(r"\.([a-z_0-9]+)(.*)", rest)
    if not match or match.group(1) not in _RESNET_PARTS:
        return rest
    return "." + _RESNET_PARTS[match.group(1)] + match.group(2)
