"""Plan how one LoRA file patches an SDXL pipeline, from its header alone: which layer each key group targets,
with which network type, and which keys nothing reads (reported, never silently dropped).

Reading the tensors and merging the deltas is the generator's job (generate/lora_set.py); this plan is what it
follows. A file meant for SD 1.x/2.x, or one whose keys name no SDXL layer, is refused here with a message saying so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from lorapipe.errors import GenerationError
from lorapipe.lora.keymap import Layer, PipelineKeyMap, group_keys, sd1_marker
from lorapipe.lora.networks import NetworkType, network_type_for
from lorapipe.lora.networks.base import ALPHA
from lorapipe.lora.peft_config import AdapterConfig

_EXAMPLES = 3
_DOWN, _UP = "lora_down.weight", "lora_up.weight"


@dataclass(frozen=True)
class LayerPatch:
    """One layer a file changes: the layer, the network type, and the file key of each suffix it reads."""

    layer: Layer
    network: NetworkType
    keys: Mapping[str, str]  # key suffix -> key in the file
    alpha: float | None = None  # from the file's peft/diffusers config when it has no `alpha` key (`peft_config`)


@dataclass(frozen=True)
class FilePlan:
    patches: tuple[LayerPatch, ...]
    dropped: tuple[str, ...]  # keys no layer or network type takes
    embeddings: tuple[str, ...]  # `bundle_emb.*` keys
    networks: tuple[str, ...]  # network type names present, for messages

    def dropped_note(self) -> str | None:
        """One line on the keys not applied, or None when every key is used."""
        if not self.dropped:
            return None
        examples = ", ".join(self.dropped[:_EXAMPLES]) + (", ..." if len(self.dropped) > _EXAMPLES else "")
        return f"{len(self.dropped)} keys not applied (no SDXL layer or known network type reads them: {examples})"


def plan_file(
    source: str,
    shapes: Mapping[str, tuple[int, ...]],
    keymap: PipelineKeyMap,
    adapter: AdapterConfig | None = None,
) -> FilePlan:
    """The patch plan for a file with these tensors (name -> shape); `source` names it in errors; `adapter` is the
    file's peft/diffusers config (`peft_config.find_adapter_config`), which scales layers without an `alpha` key."""
    marker = sd1_marker(shapes)
    if marker is not None:
        raise GenerationError(f"{source}: a LoRA for SD 1.x/2.x (key {marker!r}), not SDXL; use an SDXL LoRA")
    grouped = group_keys(shapes)
    patches, dropped = [], list(grouped.unsplit)
    unknown_stems = 0
    for stem, keys in grouped.groups.items():
        layer = keymap.layer(stem) or _fitting_layer(keymap, stem, keys, shapes)
        network = network_type_for(frozenset(keys))
        if layer is None or network is None:
            dropped.extend(keys.values())
            unknown_stems += layer is None
            continue
        alpha = None
        if adapter is not None and ALPHA not in keys:
            down = keys.get(_DOWN)
            alpha = adapter.alpha(stem, shapes[down][0] if down else None)
        patches.append(LayerPatch(layer, network, dict(keys), alpha))
    if not patches and not grouped.embeddings:
        hint = "its keys name no SDXL layer" if unknown_stems else "no known network type reads its keys"
        raise GenerationError(
            f"{source}: nothing to apply ({hint}, e.g. {', '.join(sorted(shapes)[:2])}); is it an SDXL LoRA?"
        )
    mismatched = [p for p in patches if _te_width_mismatch(p, shapes, keymap)]
    if mismatched and len(mismatched) == len(patches):
        raise GenerationError(
            f"{source}: layer sizes do not fit SDXL (e.g. {mismatched[0].layer.module_name}); "
            "a LoRA for SD 1.x/2.x or another model; use an SDXL LoRA"
        )
    networks = tuple(sorted({p.network.name for p in patches}))
    return FilePlan(tuple(patches), tuple(sorted(dropped)), tuple(sorted(grouped.embeddings)), networks)


def _fitting_layer(
    keymap: PipelineKeyMap, stem: str, keys: Mapping[str, str], shapes: Mapping[str, tuple[int, ...]]
) -> Layer | None:
    """For a name several layers share (a peft text-encoder file: CLIP-L or CLIP-G?), the one layer whose sizes the
    tensors have; None when none or several fit. Neither A1111, ComfyUI nor diffusers reads such SDXL files; on SDXL
    the sizes always decide (CLIP-L is 768 wide, CLIP-G 1280)."""
    fitting = [layer for layer in keymap.candidates(stem) if _fits(keys, shapes, keymap.weights[layer]) is True]
    return fitting[0] if len(fitting) == 1 else None


def _fits(keys: Mapping[str, str], shapes: Mapping[str, tuple[int, ...]], weight: tuple[int, ...]) -> bool | None:
    """Whether a low-rank down/up (or LoHa's first pair) has the layer's outer sizes; None for other types."""
    for down_key, up_key in ((_DOWN, _UP), ("hada_w1_b", "hada_w1_a")):
        down, up = keys.get(down_key), keys.get(up_key)
        if down is not None and up is not None:
            return shapes[up][0] == weight[0] and math.prod(shapes[down][1:]) == math.prod(weight[1:])
    return None


def _te_width_mismatch(patch: LayerPatch, shapes: Mapping[str, tuple[int, ...]], keymap: PipelineKeyMap) -> bool:
    """A low-rank down/up whose outer sizes differ from the layer's (an SD 1.x/2.x file under SDXL names)."""
    weight = keymap.weights[patch.layer]
    down, up = patch.keys.get(_DOWN), patch.keys.get(_UP)
    if down is None or up is None:
        return False
    return shapes[up][0] != weight[0] or shapes[down][1] != weight[1]
