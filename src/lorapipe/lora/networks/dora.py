"""DoRA weight decomposition (LyCORIS `dora_wd`, OneTrainer, peft `use_dora`) on top of any delta.

The file's `dora_scale` is the magnitude m of the trained weight. The merged weight is the adapted weight W + ΔW
rescaled to that magnitude, column by column: W' = (W + ΔW) · m / ‖W + ΔW‖, with the norm taken per output row
when m has one value per output channel (LyCORIS `wd_on_out`, peft) and per input column otherwise (OneTrainer,
LyCORIS's default before `wd_on_out`). The multiplier then scales W' - W, as A1111 (network.py
`apply_weight_decompose`) and ComfyUI (`weight_decompose`) do.
"""

from __future__ import annotations

from lorapipe.lora.networks.base import WeightDelta


def decompose(delta: WeightDelta, weight, magnitude) -> WeightDelta:
    """The DoRA delta W' - W for `weight` adapted by `delta` and rescaled to `magnitude` (`dora_scale`)."""
    adapted = weight + delta.weight
    on_output = magnitude.shape[0] == weight.shape[0] and magnitude.numel() == weight.shape[0]
    if on_output:
        norm = adapted.reshape(adapted.shape[0], -1).norm(dim=1).reshape(-1, *(1,) * (weight.dim() - 1))
    else:
        norm = adapted.transpose(0, 1).reshape(adapted.shape[1], -1).norm(dim=1)
        norm = norm.reshape(1, -1, *(1,) * (weight.dim() - 2))
    magnitude = magnitude.reshape(norm.shape)
    return WeightDelta(adapted * (magnitude / norm) - weight, delta.bias)
