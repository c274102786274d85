"""What each memory-saving option saves on SDXL at 1024x1024, batch 1, and the out-of-memory error that quotes it.

`estimate_savings` derives what parameter sizes alone decide, from the full architecture built on the meta device
(nothing allocated): fp8 storage of the frozen weights, the 8-bit optimizer state of a rank-`network_dim` LoRA,
and the encoders that caching moves off the GPU. What depends on activations (gradient checkpointing, batch size)
cannot be read off parameters; those stay `null` until `bench/gpu/run.sh` measures them on a GPU, which also
replaces the estimates with measured differences of peak VRAM. The shipped table is `memory_savings.json` beside
this module, each figure marked with where it came from.

`out_of_memory_error` turns a GPU out-of-memory error into a message naming the options that would cut memory (those
not yet on), each with what the table says it saves.
"""

from __future__ import annotations

import json
from pathlib import Path

from lorapipe.errors import TrainingError
from lorapipe.lora.targets import kohya_target_names
from lorapipe.sdxl.factory import build_models

SAVINGS_FILE = Path(__file__).with_name("memory_savings.json")
ESTIMATE = "estimate from parameter sizes (meta device); not yet measured on a GPU"
NOT_MEASURED = "not yet measured on a GPU"
_ADAMW_STATE_BYTES = 8  # exp_avg + exp_avg_sq in fp32, per LoRA parameter
_ADAMW8BIT_STATE_BYTES = 2  # both states in 8 bits (bitsandbytes' block-wise absmax adds ~1%)


def estimate_savings(network_dim: int = 32) -> dict:
    """The savings table for the full SDXL architecture with a U-Net LoRA of `network_dim`."""
    import torch

    from lorapipe.train.fp8 import fp8_stored_layers, stored_bytes  # imports torch

    models = build_models("full", device="meta", dtype="bf16")
    for model in models.values():
        model.requires_grad_(False)

    def fp8_bytes(part: str) -> int:  # bf16 -> fp8 saves one byte per stored weight
        return sum(m.weight.numel() for m in fp8_stored_layers(models[part]))

    lora_params = 0
    unet = models["unet"]
    for target in kohya_target_names(unet, None, None, conv=False, train_text_encoder=False):
        module = unet.get_submodule(target.module_name)
        width_in = module.in_features if isinstance(module, torch.nn.Linear) else module.in_channels
        width_out = module.out_features if isinstance(module, torch.nn.Linear) else module.out_channels
        lora_params += network_dim * (width_in + width_out)
    unet_fp8 = fp8_bytes("unet")
    options = {
        "gradient_checkpointing": _entry(None, NOT_MEASURED),
        'optimizer_type = "AdamW8bit"': _entry(lora_params * (_ADAMW_STATE_BYTES - _ADAMW8BIT_STATE_BYTES), ESTIMATE),
        "fp8_base_unet": _entry(unet_fp8, ESTIMATE),
        "fp8_base": _entry(unet_fp8 + fp8_bytes("text_encoder") + fp8_bytes("text_encoder_2"), ESTIMATE),
        "cache_latents": _entry(stored_bytes(models["vae"]), ESTIMATE + " (the VAE leaves the GPU after caching)"),
        "cache_text_encoder_outputs": _entry(
            stored_bytes(models["text_encoder"]) + stored_bytes(models["text_encoder_2"]),
            ESTIMATE + " (the text encoders leave the GPU after caching)",
        ),
        "train_batch_size = 1": _entry(None, NOT_MEASURED),
    }
    return {
        "reference": f"SDXL 1.0 architecture, 1024x1024, batch 1, U-Net LoRA network_dim {network_dim}, bf16",
        "measured_on": None,
        "options": options,
    }


def _entry(saved: int | None, source: str) -> dict:
    return {"bytes": saved, "source": source}


def load_savings(path: Path = SAVINGS_FILE) -> dict:
    """The shipped table ({} when it is missing or unreadable: advice then names options without figures)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ---- the advice ----------------------------------------------------------------------------------------------------


def out_of_memory_error(cfg, where: str) -> TrainingError:
    """A TrainingError listing the Kohya options that reduce VRAM, skipping the ones already set."""
    savings = load_savings().get("options", {})
    advice = []

    def add(text: str, key: str | None = None) -> None:
        advice.append(text + _saving(savings.get(key or text)))

    if not cfg.gradient_checkpointing:
        add("gradient_checkpointing = true", "gradient_checkpointing")
    if (cfg.optimizer_type or "AdamW").lower() in ("adamw", "lion", "prodigy"):
        add('optimizer_type = "AdamW8bit"')
    if not cfg.fp8_base and not cfg.fp8_base_unet and (cfg.mixed_precision or "no") != "no":
        # With cached text-encoder outputs the encoders are off the GPU, so only the U-Net's share counts.
        add("fp8_base = true", "fp8_base_unet" if cfg.cache_text_encoder_outputs else "fp8_base")
    elif cfg.fp8_base_unet and not cfg.cache_text_encoder_outputs:
        add("fp8_base = true (the text encoders too)")
    if not cfg.cache_latents:
        add("cache_latents = true (or cache_latents_to_disk)", "cache_latents")
    if not cfg.cache_text_encoder_outputs:
        add("cache_text_encoder_outputs = true with network_train_unet_only = true", "cache_text_encoder_outputs")
    elif not cfg.network_train_unet_only:
        add("network_train_unet_only = true")
    if (cfg.mixed_precision or "no") == "no":
        add('mixed_precision = "bf16"')
    if cfg.network_dim and cfg.network_dim > 16:
        add(f"a smaller network_dim (now {cfg.network_dim})")
    if cfg.dataset is not None and cfg.dataset.batch_size > 1:
        add(f"train_batch_size = 1 (now {cfg.dataset.batch_size})", "train_batch_size = 1")
    add("a smaller resolution")
    return TrainingError(f"out of GPU memory {where}; to use less memory set " + "; ".join(advice))


def _saving(entry: dict | None) -> str:
    """' (saves ~2.4 GiB at SDXL 1024 px; <source>)' for a table entry, '' without one."""
    if not entry:
        return ""
    if entry.get("bytes") is None:
        return f" (saving {entry.get('source', 'unknown')})"
    return f" (saves ~{entry['bytes'] / 2**30:.1f} GiB at SDXL 1024 px; {entry.get('source', 'estimate')})"


def is_out_of_memory(exc: BaseException) -> bool:
    import torch  # this module stays importable without torch (bench/gpu/check.py, the tests read the table)

    return isinstance(exc, torch.OutOfMemoryError) or "CUDA out of memory" in str(exc)
