"""LoKr (LyCORIS `algo=lokr`): a Kronecker product of two factors, either of them full or low-rank.

ΔW = kron(w1, w2) × scale, where w1 is `lokr_w1` or `lokr_w1_a @ lokr_w1_b` and w2 is `lokr_w2`, or
`lokr_w2_a @ lokr_w2_b` (with Tucker `lokr_t2` for convs: einsum("i j ..., j r, i p -> p r ...", t2, w2_b,
w2_a)). The scale is alpha / rank only when a factor is low-rank (rank = that factor's inner dimension); with both
factors full, LyCORIS stores alpha = rank and A1111/ComfyUI apply scale 1.
"""

from __future__ import annotations

from lorapipe.lora.networks.base import ALPHA, NetworkType, Tensors, WeightDelta, as_weight_shape

W1, W1A, W1B = "lokr_w1", "lokr_w1_a", "lokr_w1_b"
W2, W2A, W2B, T2 = "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"


def _factor(tensors: Tensors, full: str, a: str, b: str, t: str | None = None):
    import torch

    if full in tensors:
        return tensors[full]
    if t is not None and t in tensors:
        return torch.einsum("i j ..., j r, i p -> p r ...", tensors[t], tensors[b], tensors[a])
    factor_b = tensors[b]
    return (tensors[a] @ factor_b.flatten(1)).reshape(tensors[a].shape[0], *factor_b.shape[1:])


def lokr_delta(tensors: Tensors, weight) -> WeightDelta:
    import torch

    w1 = _factor(tensors, W1, W1A, W1B)
    w2 = _factor(tensors, W2, W2A, W2B, T2)
    if w2.dim() == 4 and w1.dim() == 2:
        w1 = w1[:, :, None, None]
    rank = tensors[W1B].shape[0] if W1B in tensors else tensors[W2B].shape[0] if W2B in tensors else None
    scale = float(tensors[ALPHA]) / rank if rank and ALPHA in tensors else 1.0
    return WeightDelta(as_weight_shape(torch.kron(w1, w2), weight) * scale)


def _is_lokr(suffixes: frozenset[str]) -> bool:
    return (W1 in suffixes or {W1A, W1B} <= suffixes) and (W2 in suffixes or {W2A, W2B} <= suffixes)


LOKR = NetworkType(
    name="lokr", title="LoKr", keys=frozenset({W1, W1A, W1B, W2, W2A, W2B, T2}), delta=lokr_delta, identify=_is_lokr
)
