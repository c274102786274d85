"""Build a network shaped like an existing Kohya LoRA file (sd-scripts `create_network_from_weights`).

Each module's rank comes from its `lora_down.weight` (dimension 0) and its alpha from `.alpha` (missing = rank,
for old files); conv target classes are always considered, and only modules present in the file are created. Use
it to evaluate or continue a LoRA whose ranks you do not know (block-wise dims, conv LoRA, another trainer).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from lorapipe.errors import ModelLoadError
from lorapipe.lora.network import (
    KohyaLoadReport,
    KohyaLoraNetwork,
    attach_kohya_lora,
    diffusers_style_aliases,
    split_kohya_key,
)
from lorapipe.lora.targets import kohya_target_names


def module_ranks_of(state_dict: Mapping[str, Any], aliases: Mapping[str, str]) -> dict[str, tuple[int, float]]:
    """kohya_name -> (rank, alpha) for every module with a `lora_down.weight` in the file."""
    downs: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for key, tensor in state_dict.items():
        stem, suffix = split_kohya_key(key)
        stem = aliases.get(stem, stem)
        if suffix == ".lora_down.weight":
            downs[stem] = int(tensor.shape[0])
        elif suffix == ".alpha":
            alphas[stem] = float(tensor)
    return {stem: (rank, alphas.get(stem) or float(rank)) for stem, rank in downs.items()}


def file_module_ranks(
    unet: Any, text_encoder: Any, text_encoder_2: Any, state_dict: Mapping[str, Any], *, source: str = "network_weights"
) -> dict[str, tuple[int, float]]:
    """kohya_name -> (rank, alpha) for the file's modules that this SDXL model has (conv targets included);
    ModelLoadError naming `source` when there is none."""
    candidates = kohya_target_names(unet, text_encoder, text_encoder_2, conv=True)
    ranks = module_ranks_of(state_dict, diffusers_style_aliases(candidates))
    known = {t.kohya_name for t in candidates}
    present = {name: value for name, value in ranks.items() if name in known}
    if not present:
        raise ModelLoadError(
            f"{source}: no Kohya LoRA module of this SDXL model in the file; is it an SDXL networks.lora file?"
        )
    return present


def attach_kohya_lora_from_weights(
    unet: Any,
    text_encoder: Any,
    text_encoder_2: Any,
    state_dict: Mapping[str, Any],
    *,
    source: str = "network_weights",
    lora_dtype: Any = "float32",
) -> tuple[KohyaLoraNetwork, KohyaLoadReport]:
    """Attach a network with the file's modules, ranks and alphas, then load its weights."""
    present = file_module_ranks(unet, text_encoder, text_encoder_2, state_dict, source=source)
    candidates = kohya_target_names(unet, text_encoder, text_encoder_2, conv=True)
    parts = {t.part for t in candidates if t.kohya_name in present}
    common_rank, common_alpha = Counter(present.values()).most_common(1)[0][0]
    network = attach_kohya_lora(
        unet,
        text_encoder,
        text_encoder_2,
        network_dim=common_rank,
        network_alpha=common_alpha,
        conv_dim=1,
        conv_alpha=1.0,
        dropout=None,
        train_unet="unet" in parts,
        train_text_encoder=bool(parts & {"text_encoder", "text_encoder_2"}),
        lora_dtype=lora_dtype,
        module_ranks=present,
    )
    return network, network.load_kohya_state_dict(state_dict, source=source)
