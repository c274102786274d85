"""Diag-OFT and BOFT (LyCORIS `algo=diag-oft` / `algo=boft`): an orthogonal rotation of the output channels.

Each block Q gives R = (I + Q') (I - Q')⁻¹ with Q' = Q - Qᵀ (Cayley), Q' shrunk to norm `alpha × out_dim` when
larger (LyCORIS stores the constraint per channel in `alpha`). Diag-OFT (`oft_blocks` is blocks × b × b) rotates
each group of b output channels: ΔW = (R - I) W blockwise. BOFT (`oft_blocks` is m × blocks × b × b) chains m
butterfly stages, stage i mixing channels 2ⁱ·b/2 apart; ΔW = R_m…R_1 W - W. An optional `rescale` (one factor per
output channel) scales the rotated weight: W' = rescale · R W. This follows LyCORIS's own `diff_weight`; the
multiplier then scales ΔW, as A1111's network_oft does.

Two older files are read as A1111 1.7+ reads them: LyCORIS's first Diag-OFT saved the rotation itself as
`oft_diag` (blocks × b × b, no Cayley step, no constraint), and sd-scripts' `networks.oft` writes `oft_blocks`
with its constraint in `alpha` under `oft_unet_` names (`lora.keymap`), the Diag-OFT maths above.
"""

from __future__ import annotations

from lorapipe.lora.networks.base import ALPHA, NetworkType, Tensors, WeightDelta

BLOCKS, ROTATION, RESCALE = "oft_blocks", "oft_diag", "rescale"


def _cayley(blocks, constraint: float):
    import torch

    eye = torch.eye(blocks.shape[-1], device=blocks.device, dtype=blocks.dtype)
    q = blocks - blocks.transpose(-1, -2)
    if constraint > 0:
        norm = torch.norm(q) + 1e-8
        if norm > constraint:
            q = q * (constraint / norm)
    return (eye + q) @ torch.linalg.inv(eye - q), eye


def _constraint(tensors: Tensors, weight) -> float:
    return float(tensors[ALPHA]) * weight.shape[0] if ALPHA in tensors else 0.0


def _with_rescale(tensors: Tensors, rotated, weight) -> WeightDelta:
    if RESCALE in tensors:
        rotated = tensors[RESCALE].reshape(-1, *(1,) * (weight.dim() - 1)) * rotated
    return WeightDelta(rotated - weight)


def diag_oft_delta(tensors: Tensors, weight) -> WeightDelta:
    import torch

    if ROTATION in tensors:  # the first LyCORIS Diag-OFT stored R itself
        blocks = r = tensors[ROTATION]
    else:
        blocks = tensors[BLOCKS]
        r, _ = _cayley(blocks, _constraint(tensors, weight))
    count, size, _ = blocks.shape
    grouped = weight.reshape(count, size, *weight.shape[1:])
    rotated = torch.einsum("k n m, k n ... -> k m ...", r, grouped).reshape(weight.shape)
    return _with_rescale(tensors, rotated, weight)


def boft_delta(tensors: Tensors, weight) -> WeightDelta:
    import torch

    blocks = tensors[BLOCKS]
    r, _ = _cayley(blocks, _constraint(tensors, weight))
    stages, _, size, _ = blocks.shape
    half = size // 2
    rotated = weight
    for stage in range(stages):
        span = 2**stage * half
        # Gather the channels this stage pairs into contiguous blocks of `size`, rotate, scatter back.
        mixed = rotated.unflatten(0, (-1, 2, span)).transpose(1, 2).flatten(0, 2).unflatten(0, (-1, size))
        mixed = torch.einsum("b i j, b j ... -> b i ...", r[stage], mixed)
        rotated = mixed.flatten(0, 1).unflatten(0, (-1, span, 2)).transpose(1, 2).flatten(0, 2)
    return _with_rescale(tensors, rotated, weight)


def oft_delta(tensors: Tensors, weight) -> WeightDelta:
    """Diag-OFT for 3-d `oft_blocks` (or `oft_diag`), BOFT for 4-d (how A1111 and ComfyUI tell them apart)."""
    if BLOCKS in tensors and tensors[BLOCKS].dim() == 4:
        return boft_delta(tensors, weight)
    return diag_oft_delta(tensors, weight)


def _is_oft(suffixes: frozenset[str]) -> bool:
    return (BLOCKS in suffixes) != (ROTATION in suffixes)


OFT = NetworkType(
    name="oft",
    title="Diag-OFT / BOFT",
    keys=frozenset({BLOCKS, ROTATION, RESCALE}),
    delta=oft_delta,
    identify=_is_oft,
)
