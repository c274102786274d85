"""LoRA and LoCon (Kohya `networks.lora`, LyCORIS `algo=locon`, diffusers and peft A/B files).

ΔW = up @ down × alpha / rank, rank = down's first dimension. A 3x3 conv (LoCon) keeps its kernel in `down`;
LyCORIS's Tucker form (`use_tucker`) adds `lora_mid` (rank × rank × kernel) between a 1x1 down and a 1x1 up:
ΔW[o, i, ...] = Σ mid[a, b, ...] · up[o, a] · down[b, i]. diffusers (`lora.down`/`lora.up`) and peft
(`lora_A`/`lora_B`) names are renamed to Kohya's before they get here (`lora.keymap`).
"""

from __future__ import annotations

from lorapipe.lora.networks.base import NetworkType, Tensors, WeightDelta, alpha_scale, as_weight_shape

DOWN, UP, MID = "lora_down.weight", "lora_up.weight", "lora_mid.weight"


def lora_delta(tensors: Tensors, weight) -> WeightDelta:
    import torch

    down, up, mid = tensors[DOWN], tensors[UP], tensors.get(MID)
    rank = down.shape[0]
    up2, down2 = up.flatten(1), down.flatten(1)
    if mid is None:
        delta = up2 @ down2
        if weight.dim() == 4 and down.dim() == 4:
            delta = delta.reshape(up.shape[0], *down.shape[1:])
    else:
        delta = torch.einsum("a b ..., o a, b i -> o i ...", mid, up2, down2)
    return WeightDelta(as_weight_shape(delta, weight) * alpha_scale(tensors, rank))


LORA = NetworkType(
    name="lora", title="LoRA / LoCon", keys=frozenset({DOWN, UP, MID}), required=frozenset({DOWN, UP}), delta=lora_delta
)
