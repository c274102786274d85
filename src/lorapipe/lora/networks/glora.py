"""GLoRA (LyCORIS `algo=glora`): a delta that scales the original weight and adds a low-rank term.

ΔW = (W @ a1 @ a2 + b1 @ b2) × alpha / rank with a1 (in × r), a2 (r × in), b1 (out × r), b2 (r × in[·kernel]), as
LyCORIS writes the four Linear weights; rank = a2's first dimension. A conv applies a1/a2 on the input-channel
axis of its kernel. (ComfyUI also reads an older LyCORIS layout with the factors swapped; no current tool writes
it.)
"""

from __future__ import annotations

from lorapipe.lora.networks.base import NetworkType, Tensors, WeightDelta, alpha_scale, as_weight_shape

A1, A2, B1, B2 = "a1.weight", "a2.weight", "b1.weight", "b2.weight"


def glora_delta(tensors: Tensors, weight) -> WeightDelta:
    import torch

    a1, a2 = tensors[A1].flatten(1), tensors[A2].flatten(1)
    b1, b2 = tensors[B1].flatten(1), tensors[B2].flatten(1)
    scaled = torch.einsum("o i ..., i j, j k -> o k ...", weight, a1, a2)
    delta = scaled + as_weight_shape(b1 @ b2, weight)
    return WeightDelta(delta * alpha_scale(tensors, a2.shape[0]))


GLORA = NetworkType(
    name="glora",
    title="GLoRA",
    keys=frozenset({A1, A2, B1, B2}),
    required=frozenset({A1, A2, B1, B2}),
    delta=glora_delta,
)
