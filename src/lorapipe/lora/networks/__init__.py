"""The network types lorapipe knows, in one list: LoRA/LoCon, LoHa, LoKr, full/diff, norm, GLoRA, (IA)³,
Diag-OFT/BOFT, and DoRA (a decomposition applied on top of LoRA, LoHa or LoKr).

One module per type (`lora.py`, `loha.py`, ...), each a `NetworkType` (base.py) that recognises its keys and gives
a weight delta; `lora.keymap` finds the layer each group of keys belongs to, and the generator merges the deltas
(generate/lora_set.py). A new type is a new module here plus a line in `NETWORK_TYPES`.

The maths follow A1111 (extensions-builtin/Lora/network_*.py), ComfyUI (comfy/weight_adapter/*) and LyCORIS's
own `lycoris.functional`, which the tests use as the reference. lorapipe does not call `lycoris` at generation
time: importing it costs seconds (it loads its training modules and kernel selection) for a few lines of tensor
algebra per type, and its functional signatures have changed between releases.
"""

from __future__ import annotations

from lorapipe.lora.networks.base import DORA_SCALE, SHARED_KEYS, NetworkType, WeightDelta
from lorapipe.lora.networks.dora import decompose
from lorapipe.lora.networks.full import FULL, NORM
from lorapipe.lora.networks.glora import GLORA
from lorapipe.lora.networks.ia3 import IA3
from lorapipe.lora.networks.loha import LOHA
from lorapipe.lora.networks.lokr import LOKR
from lorapipe.lora.networks.lora import LORA
from lorapipe.lora.networks.oft import OFT

NETWORK_TYPES: tuple[NetworkType, ...] = (LORA, LOHA, LOKR, FULL, NORM, GLORA, OFT, IA3)
# Every key suffix some type reads, longest first, so `<stem>.lora_down.weight` never splits as `... .weight`.
KEY_SUFFIXES: tuple[str, ...] = tuple(
    sorted({k for t in NETWORK_TYPES for k in t.keys} | SHARED_KEYS, key=lambda k: (-len(k), k))
)


def network_type_for(suffixes: frozenset[str]) -> NetworkType | None:
    """The type whose keys these are (one layer's key suffixes), or None when no type reads exactly them."""
    for network in NETWORK_TYPES:
        if network.matches(suffixes):
            return network
    return None


def layer_delta(network: NetworkType, tensors, weight) -> WeightDelta:
    """ΔW of one layer at multiplier 1, with DoRA's decomposition when the layer carries `dora_scale`."""
    delta = network.delta(tensors, weight)
    if DORA_SCALE in tensors:
        delta = decompose(delta, weight, tensors[DORA_SCALE])
    return delta


__all__ = ["KEY_SUFFIXES", "NETWORK_TYPES", "NetworkType", "WeightDelta", "layer_delta", "network_type_for"]
