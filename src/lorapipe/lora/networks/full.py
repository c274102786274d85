"""Full / diff (LyCORIS `algo=full`, also what "extract the difference" tools write) and LyCORIS's norm layers.

The file holds ΔW itself (`diff`, with `diff_b` for the bias); a trained norm layer holds `w_norm` / `b_norm`.
No alpha scale applies, as in A1111 (network_full.py, network_norm.py) and ComfyUI.
"""

from __future__ import annotations

from lorapipe.lora.networks.base import NetworkType, Tensors, WeightDelta, as_weight_shape

DIFF, DIFF_B, W_NORM, B_NORM = "diff", "diff_b", "w_norm", "b_norm"


def full_delta(tensors: Tensors, weight) -> WeightDelta:
    return WeightDelta(as_weight_shape(tensors[DIFF], weight), tensors.get(DIFF_B))


def norm_delta(tensors: Tensors, weight) -> WeightDelta:
    return WeightDelta(as_weight_shape(tensors[W_NORM], weight), tensors.get(B_NORM))


FULL = NetworkType(
    name="full", title="Full / diff", keys=frozenset({DIFF, DIFF_B}), required=frozenset({DIFF}), delta=full_delta
)
NORM = NetworkType(
    name="norm",
    title="Norm layers (LyCORIS)",
    keys=frozenset({W_NORM, B_NORM}),
    required=frozenset({W_NORM}),
    delta=norm_delta,
)
