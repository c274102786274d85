"""GLoRA (LyCORIS `algo=glora`): a delta that scales the original weight and adds a low-rank term.

Three layouts exist, all read here:
- LyCORIS 2.2+ (what it writes today): a1 (in × r), a2 (r × in), b1 (out × r), b2 (r × in[·kernel]);
  ΔW = (W @ a1 @ a2 + b1 @ b2) × alpha / r, r = a2's first dimension; a conv applies a1/a2 on its kernel's
  input-channel axis.
- its Tucker form for 3x3 convs (`use_tucker`): a 1x1 b2 (r × in), `bm.weight` (r × r × kernel) and b1, with
  b1 @ b2 replaced by ΔB[o, i, ...] = Σ bm[m, n, ...] · b1[o, m] · b2[n, i] (LyCORIS's `tucker_weight_from_conv`).
- the first LyCORIS GLoRA, the one A1111 (network_glora.py) reads: a1 (r × in), a2 (in × r), b1 (r × in),
  b2 (out × r); ΔW = (b2 @ b1 + W @ a2 @ a1) × alpha / r, r = a1's first dimension.
The layout is told from the shapes as ComfyUI tells it (comfy/weight_adapter/glora.py), including its tie-break:
when every factor is square and as wide as the layer, the old layout wins.
"""

from __future__ import annotations

from lorapipe.lora.networks.base import NetworkType, Tensors, WeightDelta, alpha_scale, as_weight_shape

A1, A2, B1, B2, BM = "a1.weight", "a2.weight", "b1.weight", "b2.weight", "bm.weight"


def is_old_layout(a1, a2, b1, b2, weight) -> bool:
    """Whether the four factors are the first LyCORIS GLoRA's (ComfyUI's rule)."""
    old = b2.shape[1] == b1.shape[0] == a1.shape[0] == a2.shape[1]
    new = b2.shape[0] == b1.shape[1] == a1.shape[1] == a2.shape[0]
    if old and new:
        return a2.shape[0] == weight.shape[0] == weight.shape[1]
    return old


def glora_delta(tensors: Tensors, weight) -> WeightDelta:
    import torch

    a1, a2, b1, b2 = (tensors[k] for k in (A1, A2, B1, B2))
    if BM not in tensors and is_old_layout(a1, a2, b1, b2, weight):
        delta = b2.flatten(1) @ b1.flatten(1) + weight.flatten(1) @ a2.flatten(1) @ a1.flatten(1)
        return WeightDelta(delta.reshape(weight.shape) * alpha_scale(tensors, a1.shape[0]))
    scaled = torch.einsum("o i ..., i j, j k -> o k ...", weight, a1.flatten(1), a2.flatten(1))
    if BM in tensors:
        low_rank = torch.einsum("m n ..., o m, n i -> o i ...", tensors[BM], b1.flatten(1), b2.flatten(1))
    else:
        low_rank = b1.flatten(1) @ b2.flatten(1)
    return WeightDelta((scaled + as_weight_shape(low_rank, weight)) * alpha_scale(tensors, a2.shape[0]))


GLORA = NetworkType(
    name="glora",
    title="GLoRA",
    keys=frozenset({A1, A2, B1, B2, BM}),
    required=frozenset({A1, A2, B1, B2}),
    delta=glora_delta,
)
