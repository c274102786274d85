"""Turn a GPU out-of-memory error into a message naming the options that would cut memory (those not yet on)."""

from __future__ import annotations

from lorapipe.errors import TrainingError


def out_of_memory_error(cfg, where: str) -> TrainingError:
    """A TrainingError listing the Kohya options that reduce VRAM, skipping the ones already set."""
    advice = []
    if not cfg.gradient_checkpointing:
        advice.append("gradient_checkpointing = true")
    if not cfg.cache_latents:
        advice.append("cache_latents = true")
    if not cfg.cache_text_encoder_outputs:
        advice.append("cache_text_encoder_outputs = true with network_train_unet_only = true")
    elif not cfg.network_train_unet_only:
        advice.append("network_train_unet_only = true")
    if (cfg.mixed_precision or "no") == "no":
        advice.append("mixed_precision = \"bf16\"")
    if (cfg.optimizer_type or "AdamW").lower() in ("adamw", "lion", "prodigy"):
        advice.append("optimizer_type = \"AdamW8bit\" or \"Adafactor\"")
    if cfg.network_dim and cfg.network_dim > 16:
        advice.append(f"a smaller network_dim (now {cfg.network_dim})")
    if cfg.dataset is not None and cfg.dataset.batch_size > 1:
        advice.append(f"train_batch_size = 1 (now {cfg.dataset.batch_size})")
    advice.append("a smaller resolution")
    return TrainingError(f"out of GPU memory {where}; to use less memory set " + ", ".join(advice))


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "CUDA out of memory" in str(exc)
