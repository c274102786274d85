"""What every network type shares: the key names it owns and how it turns its tensors into a weight delta.

A LoRA file holds, per wrapped layer, a *stem* (the layer's name in the file's naming scheme, e.g.
`lora_unet_input_blocks_4_1_proj_in`) and a few tensors under it (`<stem>.lora_down.weight`, `<stem>.alpha`, ...).
The part after the stem names the network type: `lora_down`/`lora_up` is LoRA, `hada_w1_a` LoHa, `lokr_w1` LoKr.
A network type reads those tensors and gives ΔW (and Δbias where it has one) at multiplier 1, computed from the
layer's original weight the way AUTOMATIC1111 (extensions-builtin/Lora/network_*.py) and ComfyUI
(comfy/weight_adapter/*) compute it; the generator adds multiplier × ΔW to the layer.

Generation needs only `delta`; the trainer side (creating a network, the writer's key names) is meant to join the
same `NetworkType` records, so one folder holds everything about a type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# Keys that any type may carry beside its own: the scale numerator and DoRA's magnitude vector.
ALPHA = "alpha"
DORA_SCALE = "dora_scale"
SHARED_KEYS = frozenset({ALPHA, DORA_SCALE})

Tensors = Mapping[str, Any]  # key suffix -> torch tensor (float32, on the layer's device)


@dataclass(frozen=True)
class WeightDelta:
    """ΔW (same shape as the layer's weight) and Δbias (None when the type has no bias term)."""

    weight: Any
    bias: Any = None


@dataclass(frozen=True)
class NetworkType:
    """One network type (`name` as LyCORIS's `algo=` spells it) and what it needs to give a delta.

    `keys`: every key suffix it reads; `required`: the suffixes whose presence identifies it (or `identify`, for
    a type with alternative forms); `delta(tensors, weight)`: ΔW at multiplier 1 from the file's tensors and the
    layer's original float32 weight.
    """

    name: str
    title: str  # what A1111/Civitai users call it, for messages and the README
    keys: frozenset[str]
    delta: Callable[[Tensors, Any], WeightDelta]
    required: frozenset[str] = frozenset()
    identify: Callable[[frozenset[str]], bool] | None = None

    def matches(self, suffixes: frozenset[str]) -> bool:
        present = self.identify(suffixes) if self.identify else self.required <= suffixes
        return present and suffixes <= self.keys | SHARED_KEYS


def alpha_scale(tensors: Tensors, rank: int) -> float:
    """alpha / rank, Kohya's scale; a file without alpha means alpha = rank (scale 1)."""
    alpha = tensors.get(ALPHA)
    if alpha is None or rank == 0:
        return 1.0
    return float(alpha) / rank


def as_weight_shape(delta: Any, weight: Any) -> Any:
    """A delta computed as a matrix, viewed in the layer's shape (conv kernels); a wrong size stays wrong."""
    if tuple(delta.shape) != tuple(weight.shape) and delta.numel() == weight.numel():
        return delta.reshape(weight.shape)
    return delta
