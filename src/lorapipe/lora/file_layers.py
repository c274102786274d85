"""Plan how one LoRA file patches an SDXL pipeline, from its header alone: which layer each key group targets,
with which network type, and which keys nothing reads (reported, never silently dropped).

Reading the tensors and merging the deltas is the generator's job (generate/lora_set.py); this plan is what it
follows. A file meant for SD 1.x/2.x, or one whose keys name no SDXL layer, is refused here with a message saying so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lorapipe.errors import GenerationError
from lorapipe.lora.keymap import Layer, PipelineKeyMap, group_keys, sd1_marker
from lorapipe.lora.networks import NetworkType, network_type_for

_EXAMPLES = 3


@dataclass(frozen=True)
class LayerPatch:
    """One layer a file changes: the layer, the network type, and the file key of each suffix it reads."""

    layer: Layer
    network: NetworkType
    keys: Mapping[str, str]  # key suffix -> key in the file


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


def plan_file(source: str, shapes: Mapping[str, tuple[int, ...]], keymap: PipelineKeyMap) -> FilePlan:
    """The patch plan for a file with these tensors (name -> shape); `source` names it in errors."""
    marker = sd1_marker(shapes)
    if marker is not None:
        raise GenerationError(f"{source}: a LoRA for SD 1.x/2.x (key {marker!r}), not SDXL; use an SDXL LoRA")
    grouped = group_keys(shapes)
    patches, dropped = [], list(grouped.unsplit)
    unknown_stems = 0
    for stem, keys in grouped.groups.items():
        layer = keymap.layer(stem)
        network = network_type_for(frozenset(keys))
        if layer is None or network is None:
            dropped.extend(keys.values())
            unknown_stems += layer is None
            continue
        patches.append(LayerPatch(layer, network, dict(keys)))
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


def _te_width_mismatch(patch: LayerPatch, shapes: Mapping[str, tuple[int, ...]], keymap: PipelineKeyMap) -> bool:
    """A low-rank down/up whose outer sizes differ from the layer's (an SD 1.x/2.x file under SDXL names)."""
    weight = keymap.weights[patch.layer]
    down, up = patch.keys.get("lora_down.weight"), patch.keys.get("lora_up.weight")
    if down is None or up is None:
        return False
    return shapes[up][0] != weight[0] or shapes[down][1] != weight[1]
