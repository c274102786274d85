"""Turn a GPU out-of-memory error into a message naming the options that would cut memory (those not yet on),
each with what it saves on SDXL at 1024 px (the table `memory_estimates` ships; figures say where they came from)."""

from __future__ import annotations

from lorapipe.errors import TrainingError


def out_of_memory_error(cfg, where: str) -> TrainingError:
    """A TrainingError listing the Kohya options that reduce VRAM, skipping the ones already set."""
    from lorapipe.train.memory_estimates import load_savings

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
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "CUDA out of memory" in str(exc)
