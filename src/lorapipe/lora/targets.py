"""Which modules Kohya's `networks.lora` wraps, and the Kohya key name of each.

The rule (sd-scripts `networks/lora.py`): inside every module whose *class name* is a target class, every `Linear`
and every 1x1 `Conv2d` gets a LoRA; 3x3 convs only when conv LoRA (`conv_dim`) is on. UNet names are written in
the original SGM layout (`input_blocks.4.1...`) because sd-scripts trains its own SGM-named UNet; we derive them
from the diffusers names with `sdxl.sgm_names.UnetNameMap`, so the tiny and the full model follow one rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# Kohya's target classes (sd-scripts LoRANetwork.UNET_TARGET_REPLACE_MODULE and friends).
UNET_TARGET_CLASSES = ("Transformer2DModel",)
UNET_CONV_TARGET_CLASSES = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_ENCODER_TARGET_CLASSES = ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP")


@dataclass(frozen=True)
class TargetClasses:
    """The module classes whose Linear/Conv2d children get a LoRA: Kohya's by default, a LyCORIS preset's when
    `lycoris.kohya` trains plain LoRA (`lycoris_network.plain_lora_classes`)."""

    unet: tuple[str, ...] = UNET_TARGET_CLASSES
    unet_conv: tuple[str, ...] = UNET_CONV_TARGET_CLASSES
    text_encoder: tuple[str, ...] = TEXT_ENCODER_TARGET_CLASSES


KOHYA_CLASSES = TargetClasses()

# Model part -> Kohya key prefix. The order is the order of parts in a file.
PARTS = ("unet", "text_encoder", "text_encoder_2")
KOHYA_PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}
TEXT_ENCODER_PARTS = ("text_encoder", "text_encoder_2")

# Kinds of wrapped layer: Linear and 1x1 convs take network_dim/alpha, 3x3 convs conv_dim/conv_alpha.
LINEAR, CONV1X1, CONV3X3 = "linear", "conv1x1", "conv3x3"
# Sub-module names peft adds inside a wrapped layer; never targets themselves.
_PEFT_INTERNALS = frozenset(
    {"base_layer", "lora_A", "lora_B", "lora_dropout", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"}
)


@dataclass(frozen=True)
class KohyaTarget:
    """One wrapped layer: where it lives in the diffusers/transformers model and its Kohya key name."""

    part: str  # "unet" | "text_encoder" | "text_encoder_2"
    module_name: str  # dotted path inside that model, e.g. "down_blocks.1.attentions.0.proj_in"
    kohya_name: str  # key stem, e.g. "lora_unet_input_blocks_4_1_proj_in"
    kind: str  # LINEAR | CONV1X1 | CONV3X3

    @property
    def uses_conv_dim(self) -> bool:
        return self.kind == CONV3X3


@dataclass(frozen=True)
class KohyaTargets:
    """The wrapped layers per model part, in model order."""

    unet: tuple[KohyaTarget, ...] = ()
    text_encoder: tuple[KohyaTarget, ...] = ()
    text_encoder_2: tuple[KohyaTarget, ...] = ()

    def part(self, name: str) -> tuple[KohyaTarget, ...]:
        return getattr(self, name)

    def __iter__(self) -> Iterator[KohyaTarget]:
        for part in PARTS:
            yield from self.part(part)

    def __len__(self) -> int:
        return sum(len(self.part(p)) for p in PARTS)

    @property
    def counts(self) -> dict[str, int]:
        return {p: len(self.part(p)) for p in PARTS}

    def kohya_names(self) -> list[str]:
        return [t.kohya_name for t in self]


def kohya_key(prefix: str, dotted_name: str) -> str:
    """`lora_unet` + `input_blocks.4.1.proj_in` -> `lora_unet_input_blocks_4_1_proj_in`."""
    return f"{prefix}_{dotted_name.replace('.', '_')}"


def kohya_target_names(
    unet: Any,
    text_encoder: Any,
    text_encoder_2: Any,
    *,
    conv: bool,
    train_unet: bool = True,
    train_text_encoder: bool = True,
    classes: TargetClasses = KOHYA_CLASSES,
) -> KohyaTargets:
    """List Kohya's targets for these models (722 + 264 on SDXL, +66 UNet modules with `conv`).

    A part that is not trained (or passed as None) gets no targets, as sd-scripts saves no keys for it.
    """
    unet_targets: tuple[KohyaTarget, ...] = ()
    te_targets: dict[str, tuple[KohyaTarget, ...]] = {p: () for p in TEXT_ENCODER_PARTS}
    if train_unet and unet is not None:
        unet_targets = tuple(_unet_targets(unet, classes, conv=conv))
    if train_text_encoder:
        for part, model in zip(TEXT_ENCODER_PARTS, (text_encoder, text_encoder_2)):
            if model is not None:
                te_targets[part] = tuple(_text_encoder_targets(part, model, classes.text_encoder))
    return KohyaTargets(unet=unet_targets, **te_targets)


def _unet_targets(unet: Any, classes: TargetClasses, *, conv: bool) -> Iterator[KohyaTarget]:
    from lorapipe.sdxl.sgm_names import UnetNameMap

    name_map = UnetNameMap(unet.config)
    for module_name, kind in _wrapped_layers(unet, classes.unet + (classes.unet_conv if conv else ()), allow_3x3=conv):
        sgm_name = name_map.to_sgm(module_name)
        yield KohyaTarget("unet", module_name, kohya_key(KOHYA_PREFIXES["unet"], sgm_name), kind)


def _text_encoder_targets(part: str, model: Any, classes: tuple[str, ...]) -> Iterator[KohyaTarget]:
    for module_name, kind in _wrapped_layers(model, classes, allow_3x3=False):
        yield KohyaTarget(part, module_name, kohya_key(KOHYA_PREFIXES[part], _kohya_text_path(module_name)), kind)


def _kohya_text_path(module_name: str) -> str:
    """Kohya names CLIP layers from `text_model.` on; transformers 5's CLIPTextModel drops that level."""
    return module_name if module_name.startswith("text_model.") else "text_model." + module_name


def _wrapped_layers(model: Any, target_classes: tuple[str, ...], *, allow_3x3: bool) -> Iterator[tuple[str, str]]:
    """(module name, kind) of each Linear / Conv2d inside a target-class module, each once, in model order."""
    import torch

    seen: set[str] = set()
    for parent_name, parent in model.named_modules():
        if type(parent).__name__ not in target_classes:
            continue
        for child_name, child in parent.named_modules():
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if not child_name or name in seen or _inside_peft_layer(child_name):
                continue
            # A layer already wrapped by peft counts as the layer it wraps, so the answer does not change
            # after `attach_kohya_lora`.
            kind = _layer_kind(getattr(child, "base_layer", child), torch)
            if kind is None or (kind == CONV3X3 and not allow_3x3):
                continue
            seen.add(name)
            yield name, kind


def _inside_peft_layer(name: str) -> bool:
    return any(part in _PEFT_INTERNALS for part in name.split("."))


def _layer_kind(module: Any, torch: Any) -> str | None:
    if isinstance(module, torch.nn.Linear):
        return LINEAR
    if isinstance(module, torch.nn.Conv2d):
        return CONV1X1 if tuple(module.kernel_size) == (1, 1) else CONV3X3
    return None
