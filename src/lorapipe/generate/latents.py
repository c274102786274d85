"""Latent tensors the pipelines do not handle for us: variation-seed noise mixing, decoding saved latents, and
the masked start latents of A1111's latent inpainting fills."""

from __future__ import annotations


def slerp(t: float, low, high):
    """Spherical interpolation of two noise tensors, per sample (A1111's variation seed)."""
    import torch

    low_flat, high_flat = low.flatten(1), high.flatten(1)
    low_n = low_flat / low_flat.norm(dim=1, keepdim=True)
    high_n = high_flat / high_flat.norm(dim=1, keepdim=True)
    dot = (low_n * high_n).sum(1).clamp(-1, 1)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    near = dot.abs() > 0.9995
    w_low = torch.where(near, 1 - t, torch.sin((1 - t) * omega) / so).unsqueeze(1)
    w_high = torch.where(
        near, torch.tensor(t, dtype=low.dtype, device=low.device), torch.sin(t * omega) / so
    ).unsqueeze(1)
    return (w_low * low_flat + w_high * high_flat).reshape(low.shape)


def decode_latents(pipe, latents) -> list:
    """Decode SDXL latents to PIL images the way the diffusers SDXL pipeline does (fp16 VAE upcast included)."""
    import torch

    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and vae.config.force_upcast
    if upcast:
        pipe.upcast_vae()
    latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype)
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, latents.shape[1], 1, 1)
        mean = torch.tensor(mean).view(shape).to(latents)
        std = torch.tensor(std).view(shape).to(latents)
        latents = latents * std / vae.config.scaling_factor + mean
    else:
        latents = latents / vae.config.scaling_factor
    with torch.no_grad():
        decoded = vae.decode(latents, return_dict=False)[0]
    if upcast:
        vae.to(dtype=torch.float16)
    return list(pipe.image_processor.postprocess(decoded, output_type="pil"))


def encode_images(pipe, pixels):
    """Encode (N, 3, H, W) pixels in [-1, 1] to SDXL latents as the diffusers SDXL inpaint pipeline does, taking
    the posterior's mean (a deterministic start; the pipeline adds the seed's noise on top)."""
    import torch

    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and vae.config.force_upcast
    if upcast:
        vae.to(dtype=torch.float32)
    with torch.no_grad():
        latents = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.mode()
    if upcast:
        vae.to(dtype=torch.float16)
    return latents.to(pipe.unet.dtype) * vae.config.scaling_factor


def masked_start_latents(pipe, images, masks, seeds, *, noise: bool):
    """A1111's "latent noise" / "latent nothing": the images' latents with the masked part replaced by each
    seed's noise (as A1111 draws it from the image seeds) or by zeros. `masks` go through the pipeline's own
    mask processor so the replaced area is the one its latent blend repaints."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    latents = encode_images(pipe, pipe.image_processor.preprocess(images))
    mask = pipe.mask_processor.preprocess(masks)
    mask = torch.nn.functional.interpolate(mask, size=latents.shape[-2:]).to(latents)  # as prepare_mask_latents
    if noise:
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        fill = randn_tensor(latents.shape, generator=generators, device=latents.device, dtype=latents.dtype)
    else:
        fill = torch.zeros_like(latents)
    return latents * (1 - mask) + fill * mask
