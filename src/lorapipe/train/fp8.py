"""fp8 base weights (Kohya's `fp8_base`, `fp8_base_unet`): the frozen base model stored in float8_e4m3fn and
computed in the training dtype (bf16/fp16) one layer at a time.

sd-scripts casts the whole U-Net (and with `fp8_base` alone, the text encoders) to float8_e4m3fn and relies on
autocast to upcast each weight inside its op. We do the same cast explicitly with a torch parametrization on every
frozen Linear/Conv2d weight: the parameter is stored in fp8 and each forward reads a fresh bf16 copy of it, so
only the layer being computed is held at full width. Two differences from sd-scripts, both for precision only:
normalisation layers and the U-Net's first convolution stay in the compute dtype (they are tiny), and the LoRA's
own weights are never stored in fp8 (the network attaches after this, around the parametrized layers).

Why not diffusers' `enable_layerwise_casting` (the library's inference tool for the same storage): its hooks
recast the module's parameters in place after each forward, and gradient checkpointing then finds the weights it
saved changed to fp8 in its recompute (torch.utils.checkpoint refuses). A parametrization makes a new tensor per
forward, which checkpointing recomputes identically. As with sd-scripts' autocast, the bf16 copy a layer computed
with is kept for its backward unless gradient checkpointing frees it, so the memory saving is largest with
gradient_checkpointing = true.

Which parts, as sd-scripts decides: `fp8_base` -> U-Net and both text encoders; `fp8_base_unet` -> the U-Net only
(the text encoders stay in the training dtype).
"""

from __future__ import annotations

import torch
from torch.nn.utils import parametrize

FP8_STORAGE = torch.float8_e4m3fn  # sd-scripts' fp8 format (4-bit exponent, 3-bit mantissa)
_STORED_LAYERS = (torch.nn.Linear, torch.nn.Conv2d)
# Never stored in fp8: normalisation (precision-critical), the LoRA itself (trained), and the first layer of each
# model: the text encoders' embeddings (sd-scripts keeps them in bf16 too) and the U-Net's conv_in, whose dtype is
# what diffusers' pipelines read as "the model's dtype" for latents and prompt embeddings (sample images).
_SKIPPED = ("norm", "lora_A", "lora_B", "conv_in")


def fp8_parts(fp8_base: bool, fp8_base_unet: bool) -> tuple[str, ...]:
    """The model parts whose frozen weights are stored in fp8 (sd-scripts' unet/te_weight_dtype choice)."""
    if fp8_base_unet:
        return ("unet",)
    if fp8_base:
        return ("unet", "text_encoder", "text_encoder_2")
    return ()


class _ComputedIn(torch.nn.Module):
    """Parametrization: the stored (fp8) weight is read as `dtype`."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.to(self.dtype)


def store_base_in_fp8(models: dict, parts: tuple[str, ...], compute_dtype: torch.dtype) -> int:
    """Store the frozen Linear/Conv2d weights of `parts` of `models` ({"unet": ..., "text_encoder": ...})
    in fp8, computed in `compute_dtype` (bf16/fp16: config/checks.py refuses fp8 without mixed precision).
    Called before the LoRA network attaches (peft and LyCORIS wrap the parametrized layers and read their weight in
    `compute_dtype`); layers that train are left alone. Returns the number of layers stored."""
    stored = 0
    for part in parts:
        for module in fp8_stored_layers(models[part]):
            module.weight = torch.nn.Parameter(module.weight.detach().to(FP8_STORAGE), requires_grad=False)
            # unsafe: the layer reads another dtype than the one stored (that is the point)
            parametrize.register_parametrization(module, "weight", _ComputedIn(compute_dtype), unsafe=True)
            stored += 1
    return stored


def fp8_stored_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The frozen layers of `model` whose weights fp8 storage takes (also what the memory estimates count)."""
    return [
        module
        for name, module in model.named_modules()
        if isinstance(module, _STORED_LAYERS)
        and not any(skip in name for skip in _SKIPPED)
        and not parametrize.is_parametrized(module, "weight")
        and not module.weight.requires_grad
    ]


def stored_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters as stored (what fp8 storage halves)."""
    return sum(p.numel() * p.element_size() for p in module.parameters())
