"""peft's scale for files whose keys carry no `alpha`: peft and diffusers keep lora_alpha in a config instead.

Where the config is, first found wins:
- the file's own `lora_adapter_metadata` header entry (diffusers' `save_lora_weights` / `save_lora_adapter`): a
  LoraConfig as JSON, per component (`unet.r`, `text_encoder.lora_alpha`, ...) in a pipeline file;
- `adapter_config.json` beside a file with peft's `base_model.model.` keys (peft's `save_pretrained` writes the
  pair, `adapter_model.safetensors` + `adapter_config.json`).
Without either the scale is 1 (alpha = rank), as A1111, ComfyUI and diffusers read such files. With one, the layer
gets peft's scale lora_alpha / r (lora_alpha / √r with `use_rslora`; `alpha` for peft's LoHa/LoKr), per module from
`alpha_pattern` as peft matches it, handed to the network types as the Kohya alpha that gives that scale.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorapipe.errors import GenerationError

ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
ADAPTER_CONFIG_NAME = "adapter_config.json"  # peft's CONFIG_NAME
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"  # peft's SAFETENSORS_WEIGHTS_NAME, listed under its folder's name
PEFT_PREFIX = "base_model.model."
_COMPONENTS = ("text_encoder_2", "text_encoder", "unet")  # longest first: `text_encoder_2.` before `text_encoder.`
_PEFT_TYPES = frozenset({"LORA", "LOHA", "LOKR"})


@dataclass(frozen=True)
class AdapterConfig:
    """The LoraConfig of a whole file (key None) or of each component a diffusers pipeline file names."""

    configs: Mapping[str | None, Mapping[str, Any]]
    source: str  # where it was read, for messages

    def alpha(self, stem: str, rank: int | None) -> float | None:
        """The Kohya alpha giving layer `stem` peft's scale (alpha / rank = lora_alpha / r), None when uncovered."""
        component, module = split_stem(stem)
        config = self.configs.get(component, self.configs.get(None))
        if config is None:
            return None
        alpha = config.get("lora_alpha", config.get("alpha"))
        patterns = config.get("alpha_pattern") or {}
        if patterns:
            from peft.utils.other import get_pattern_key

            alpha = patterns.get(get_pattern_key(list(patterns), module), alpha)
        if alpha is None:
            return None
        if config.get("use_rslora") and rank:
            return float(alpha) * math.sqrt(rank)
        return float(alpha)


def split_stem(stem: str) -> tuple[str | None, str]:
    """(component prefix or None, the module's name inside the model peft wrapped)."""
    if stem.startswith(PEFT_PREFIX):
        return None, stem[len(PEFT_PREFIX) :]
    for component in _COMPONENTS:
        if stem.startswith(component + "."):
            return component, stem[len(component) + 1 :]
    return None, stem


def find_adapter_config(path: Path, metadata: Mapping[str, str], keys: Iterable[str]) -> AdapterConfig | None:
    """The peft/diffusers config that scales this file's layers, or None (every layer at scale 1)."""
    if ADAPTER_METADATA_KEY in metadata:
        raw, source = metadata[ADAPTER_METADATA_KEY], f"{path.name} ({ADAPTER_METADATA_KEY})"
    else:
        beside = path.parent / ADAPTER_CONFIG_NAME
        if not any(key.startswith(PEFT_PREFIX) for key in keys) or not beside.is_file():
            return None
        raw, source = beside.read_text(encoding="utf-8"), str(beside)
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise GenerationError(f"{source}: not valid JSON ({exc}); fix or remove it") from None
    if not isinstance(config, dict):
        raise GenerationError(f"{source}: not a peft LoraConfig (a JSON object); fix or remove it")
    configs = _by_component(config)
    for part in configs.values():
        peft_type = str(part.get("peft_type") or "LORA").upper()
        if peft_type not in _PEFT_TYPES:
            raise GenerationError(
                f"{source}: peft_type {peft_type!r} is not LoRA, LoHa or LoKr; lorapipe cannot apply it"
            )
    return AdapterConfig(configs, source)


def _by_component(config: Mapping[str, Any]) -> dict[str | None, dict[str, Any]]:
    """Split a diffusers pipeline file's `unet.r`, `text_encoder.lora_alpha`, ... into one config per component."""
    grouped: dict[str | None, dict[str, Any]] = {}
    for key, value in config.items():
        component, _, field = key.partition(".")
        if field and component in _COMPONENTS:
            grouped.setdefault(component, {})[field] = value
        else:
            grouped.setdefault(None, {})[key] = value
    return grouped
