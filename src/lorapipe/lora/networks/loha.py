"""LoHa (LyCORIS `algo=loha`): a Hadamard product of two low-rank products.

ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b) × alpha / rank, rank = w1_b's first dimension. With Tucker (`hada_t1`,
`hada_t2`, for 3x3 convs) each half is t ×₀ a ×₁ b: half[o, i, ...] = Σ t[p, q, ...] · a[p, o]ᵀ... as LyCORIS's
`rebuild_tucker` writes it: einsum("i j ..., j r, i p -> p r ...", t, b, a).
"""

from __future__ import annotations

from lorapipe.lora.networks.base import NetworkType, Tensors, WeightDelta, alpha_scale, as_weight_shape

W1A, W1B, W2A, W2B, T1, T2 = "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"


def _half(a, b, t):
    import torch

    if t is None:
        return a @ b.flatten(1)
    return torch.einsum("i j ..., j r, i p -> p r ...", t, b, a)


def loha_delta(tensors: Tensors, weight) -> WeightDelta:
    w1b = tensors[W1B]
    delta = _half(tensors[W1A], w1b, tensors.get(T1)) * _half(tensors[W2A], tensors[W2B], tensors.get(T2))
    return WeightDelta(as_weight_shape(delta, weight) * alpha_scale(tensors, w1b.shape[0]))


LOHA = NetworkType(
    name="loha",
    title="LoHa",
    keys=frozenset({W1A, W1B, W2A, W2B, T1, T2}),
    required=frozenset({W1A, W1B, W2A, W2B}),
    delta=loha_delta,
)
