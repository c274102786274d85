"""Which layer of the SDXL pipeline each key of a LoRA file names, whatever tool wrote the file.

Layer names in the wild, all mapped here (as ComfyUI's `comfy/lora.py model_lora_keys_*` and A1111's
`networks.py` map them):

| writer | UNet | text encoders |
| --- | --- | --- |
| Kohya sd-scripts, LyCORIS, A1111 | `lora_unet_<SGM name, _ for .>` (or diffusers names) | `lora_te1_…`, `lora_te2_…` |
| sd-scripts `networks.oft` | `oft_unet_<SGM name, _ for .>` | - |
| diffusers | `unet.<diffusers name>` | `text_encoder.…`, `text_encoder_2.…` |
| peft (`save_pretrained` of one model) | `base_model.model.<diffusers name>` | `base_model.model.text_model.…` (*) |
| SimpleTuner (LyCORIS) | `lycoris_<diffusers name, _ for .>` | - |
| ComfyUI, OneTrainer | `diffusion_model.<SGM name>` | `text_encoders.clip_l.transformer.…`, `…clip_g…` |

(*) also bare, and without `text_model.` (transformers 5); both encoders have these names, so the one whose sizes
the tensors have is taken.

Key suffixes are brought to Kohya's spelling first (`lora_A.weight`/`lora.down.weight` → `lora_down.weight`, peft's
`lora_magnitude_vector` → `dora_scale`). Files for SD 1.x/2.x are recognised by names SDXL does not have (a single
`lora_te_` text encoder, attention in the first UNet level) and refused with a message that says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from lorapipe.lora.networks import KEY_SUFFIXES
from lorapipe.lora.peft_config import PEFT_PREFIX
from lorapipe.lora.targets import KOHYA_PREFIXES

_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
_COMFY_TE = {"text_encoder": "text_encoders.clip_l.transformer.", "text_encoder_2": "text_encoders.clip_g.transformer."}
# Renames to Kohya's key spelling: diffusers' `lora.down`, peft's `lora_A`, diffusers' old attention processors.
_SUFFIX_RENAMES = (
    (re.compile(r"\.lora(?:_linear_layer)?\.down\.weight$"), ".lora_down.weight"),
    (re.compile(r"\.lora(?:_linear_layer)?\.up\.weight$"), ".lora_up.weight"),
    (re.compile(r"\.lora_A(?:\.default)?\.weight$"), ".lora_down.weight"),
    (re.compile(r"\.lora_B(?:\.default)?\.weight$"), ".lora_up.weight"),
    (re.compile(r"\.lora_magnitude_vector(?:\.default)?(?:\.weight)?$"), ".dora_scale"),
)
_OLD_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.")
# Names only SD 1.x/2.x files have: one text encoder, attention blocks in the first UNet level.
_SD1_MARKERS = re.compile(
    r"^(lora_te_|lora_unet_(input_blocks_[12]_1_|down_blocks_0_attentions_|output_blocks_(9|1[01])_1_)"
    r"|(model\.)?diffusion_model\.input_blocks\.[12]\.1\.|unet\.down_blocks\.0\.attentions\.)"
)
EMBEDDING_PREFIX = "bundle_emb."
_KOHYA_OFT_UNET = "oft_unet"  # sd-scripts' networks.oft names UNet layers as networks.lora does, with this prefix


@dataclass(frozen=True)
class Layer:
    """Where a stem points: the pipeline component and the module's dotted name inside it."""

    component: str
    module_name: str


class PipelineKeyMap:
    """Every name a LoRA file may use for each weighted layer of one SDXL pipeline (built once per pipeline)."""

    def __init__(self, components: Mapping[str, Any]):
        from lorapipe.sdxl.sgm_names import UnetNameMap

        names: dict[str, Layer] = {}
        # Names both text encoders share: a peft file of one encoder (`base_model.model.text_model.…`, or its bare
        # state dict) does not say which; `file_layers` picks the one whose sizes the tensors have.
        shared: dict[str, list[Layer]] = {}
        self.weights: dict[Layer, tuple[int, ...]] = {}
        unet = components.get("unet")
        if unet is not None:
            sgm = UnetNameMap(unet.config)
            for name, _module in _weighted_modules(unet):
                layer = Layer("unet", name)
                self.weights[layer] = tuple(_module.weight.shape)
                aliases = [
                    name,  # diffusers' state dict of the UNet alone
                    f"unet.{name}",
                    f"{PEFT_PREFIX}{name}",
                    f"{KOHYA_PREFIXES['unet']}_{_flat(name)}",
                    f"lycoris_{_flat(name)}",  # SimpleTuner's LyCORIS files
                ]
                try:
                    sgm_name = sgm.to_sgm(name)
                except KeyError:
                    sgm_name = None
                if sgm_name:
                    aliases += [
                        f"{KOHYA_PREFIXES['unet']}_{_flat(sgm_name)}",
                        f"{_KOHYA_OFT_UNET}_{_flat(sgm_name)}",  # sd-scripts networks.oft
                        f"diffusion_model.{sgm_name}",
                        f"model.diffusion_model.{sgm_name}",
                    ]
                names.update(dict.fromkeys(aliases, layer))
        for component in ("text_encoder", "text_encoder_2"):
            model = components.get(component)
            if model is None:
                continue
            for name, _module in _weighted_modules(model):
                layer = Layer(component, name)
                self.weights[layer] = tuple(_module.weight.shape)
                kohya = name if name.startswith("text_model.") else f"text_model.{name}"
                aliases = [
                    f"{KOHYA_PREFIXES[component]}_{_flat(kohya)}",
                    f"{component}.{name}",
                    f"{component}.{kohya}",
                    f"{_COMFY_TE[component]}{kohya}",
                ]
                names.update(dict.fromkeys(aliases, layer))
                # transformers 5's CLIPTextModel has no `text_model.` level, so its peft names lack it
                for alias in {f"{PEFT_PREFIX}{kohya}", kohya, f"{PEFT_PREFIX}{name}", name}:
                    shared.setdefault(alias, []).append(layer)
        self._names = MappingProxyType(names)
        self._shared = MappingProxyType({name: tuple(layers) for name, layers in shared.items()})

    def layer(self, stem: str) -> Layer | None:
        return self._names.get(stem)

    def candidates(self, stem: str) -> tuple[Layer, ...]:
        """The layers a name no single layer owns may mean (both text encoders' for a peft text-encoder name)."""
        return self._shared.get(stem, ())


@dataclass(frozen=True)
class KeyGroups:
    """A file's keys sorted out: tensors by (stem, suffix), keys no layer name matched, embedding keys."""

    groups: Mapping[str, Mapping[str, str]]  # stem -> {suffix: original key}
    unsplit: tuple[str, ...]  # keys without a suffix any network type reads
    embeddings: tuple[str, ...]  # `bundle_emb.*` keys (textual inversion bundled with a Kohya LoRA)


def group_keys(keys: Iterable[str]) -> KeyGroups:
    """Split every key into (layer stem, network key suffix) after renaming diffusers/peft spellings."""
    groups: dict[str, dict[str, str]] = {}
    unsplit, embeddings = [], []
    for key in keys:
        if key.startswith(EMBEDDING_PREFIX):
            embeddings.append(key)
            continue
        split = split_key(normalise_key(key))
        if split is None:
            unsplit.append(key)
            continue
        stem, suffix = split
        groups.setdefault(stem, {})[suffix] = key
    return KeyGroups(groups, tuple(unsplit), tuple(embeddings))


def normalise_key(key: str) -> str:
    key = _OLD_PROCESSOR.sub(lambda m: f".{m.group(1) if m.group(1) != 'to_out' else 'to_out.0'}.lora.", key)
    for pattern, replacement in _SUFFIX_RENAMES:
        key = pattern.sub(replacement, key)
    return key


def split_key(key: str) -> tuple[str, str] | None:
    for suffix in KEY_SUFFIXES:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], suffix
    return None


def sd1_marker(keys: Iterable[str]) -> str | None:
    """The first key that only an SD 1.x/2.x LoRA has, or None."""
    return next((key for key in keys if _SD1_MARKERS.match(key)), None)


def _flat(dotted: str) -> str:
    return dotted.replace(".", "_")


def _weighted_modules(model: Any) -> Iterable[tuple[str, Any]]:
    import torch

    for name, module in model.named_modules():
        if name and isinstance(getattr(module, "weight", None), torch.Tensor):
            yield name, module
