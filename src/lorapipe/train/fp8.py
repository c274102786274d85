"""fp8 base weights (Kohya's `fp8_base`, `fp8_base_unet`): the frozen base model stored in float8_e4m3fn and
computed in the training dtype (bf16/fp16) one layer at a time.

sd-scripts casts the whole U-Net (and with `fp8_base` alone, the text encoders) to float8_e4m3fn and relies on
autocast to upcast each weight inside its op. We do the same cast explicitly with a torch parametrization on every
frozen Linear/Conv2d weight: the parameter is stored in fp8 and each forward reads a fresh bf16 copy of it, so
only the layer being computed is held at full width. Two differences from sd-scripts, both for precision only:
normalisation layers and the U-Net's first convolution stay in the compute dtype (they are tiny), and the LoRA's
own weights are never stored in fp8 (the network attaches after this, around the parametrized layers).

The forward of each stored layer is a small autograd function that keeps the fp8 weight (already in memory) for
its backward and re-reads it there, instead of the bf16 copy autocast would keep (in sd-scripts, and with a plain
parametrization, every layer's bf16 copy stays alive until the backward pass unless gradient checkpointing frees
it, so fp8 without checkpointing can cost more than bf16). Anyone reading `layer.weight` (peft, LyCORIS) gets it
in the compute dtype through the parametrization. diffusers' `enable_layerwise_casting` is the library's tool for
fp8 storage at inference; it recasts the parameters in place after each forward, which gradient checkpointing's
recompute refuses, so training cannot use it.

Which parts, as sd-scripts decides: `fp8_base` -> U-Net and both text encoders; `fp8_base_unet` -> the U-Net only
(the text encoders stay in the training dtype).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
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


class _Fp8Linear(torch.autograd.Function):
    """x W^T + b with W read from fp8 storage; the backward re-reads W instead of keeping the bf16 copy."""

    @staticmethod
    def forward(ctx, x, stored, bias, dtype):
        ctx.save_for_backward(stored)
        ctx.dtype = dtype
        return F.linear(x, stored.to(dtype), bias)

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        (stored,) = ctx.saved_tensors
        return grad.to(ctx.dtype) @ stored.to(ctx.dtype), None, None, None


class _Fp8Conv2d(torch.autograd.Function):
    """conv2d with the weight read from fp8 storage; the backward re-reads it (only the input's shape is kept)."""

    @staticmethod
    def forward(ctx, x, stored, bias, dtype, geometry):
        ctx.save_for_backward(stored)
        ctx.dtype, ctx.geometry, ctx.input_shape = dtype, geometry, x.shape
        return F.conv2d(x, stored.to(dtype), bias, *geometry)

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        (stored,) = ctx.saved_tensors
        weight = stored.to(ctx.dtype)
        grad_input = torch.nn.grad.conv2d_input(ctx.input_shape, weight, grad.to(ctx.dtype), *ctx.geometry)
        return grad_input, None, None, None, None


def _linear_forward(module, x):
    return _Fp8Linear.apply(x, module.parametrizations.weight.original, module.bias, module.compute_dtype)


def _conv_forward(module, x):
    geometry = (module.stride, module.padding, module.dilation, module.groups)
    return _Fp8Conv2d.apply(x, module.parametrizations.weight.original, module.bias, module.compute_dtype, geometry)


def store_base_in_fp8(models: dict, parts: tuple[str, ...], compute_dtype: torch.dtype) -> int:
    """Store the frozen Linear/Conv2d weights of `parts` of `models` ({"unet": ..., "text_encoder": ...})
    in fp8, computed in `compute_dtype` (bf16/fp16: config/checks.py refuses fp8 without mixed precision).
    Called before the LoRA network attaches (peft and LyCORIS wrap these layers; whoever reads `.weight` gets it in
    `compute_dtype`); layers that train are left alone. Returns the number of layers stored."""
    stored = 0
    for part in parts:
        for module in fp8_stored_layers(models[part]):
            module.weight = torch.nn.Parameter(module.weight.detach().to(FP8_STORAGE), requires_grad=False)
            # unsafe: the layer reads another dtype than the one stored (that is the point)
            parametrize.register_parametrization(module, "weight", _ComputedIn(compute_dtype), unsafe=True)
            module.compute_dtype = compute_dtype
            if isinstance(module, torch.nn.Linear):
                module.forward = partial(_linear_forward, module)
            elif module.padding_mode == "zeros" and not isinstance(module.padding, str):
                module.forward = partial(_conv_forward, module)
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
    """Bytes of a module's parameters as stored (fp8 storage halves those of its stored layers)."""
    return sum(p.numel() * p.element_size() for p in module.parameters())
