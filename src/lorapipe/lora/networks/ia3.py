"""(IA)³ (LyCORIS `algo=ia3`): a learned scale per output channel (or per input channel, `on_input` = 1).

ΔW = W · w broadcast along the output axis (or the input axis), as LyCORIS's `IA3Module.get_diff_weight`.
"""

from __future__ import annotations

from lorapipe.lora.networks.base import NetworkType, Tensors, WeightDelta

WEIGHT, ON_INPUT = "weight", "on_input"


def ia3_delta(tensors: Tensors, weight) -> WeightDelta:
    scale = tensors[WEIGHT].flatten()
    on_input = ON_INPUT in tensors and bool(tensors[ON_INPUT].flatten()[0])
    trailing = (1,) * (weight.dim() - 2)
    scale = scale.reshape(1, -1, *trailing) if on_input else scale.reshape(-1, 1, *trailing)
    return WeightDelta(weight * scale)


IA3 = NetworkType(
    name="ia3", title="(IA)³", keys=frozenset({WEIGHT, ON_INPUT}), required=frozenset({WEIGHT}), delta=ia3_delta
)
