"""One micro-batch: latents and text conditioning (cached or fresh), noise, UNet prediction, loss."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lorapipe.train.data import TrainBatch
from lorapipe.train.loss import LossOptions, training_loss
from lorapipe.train.noise import NoiseOptions, make_noise, noisy_latents, prediction_target, sample_timesteps


@dataclass(frozen=True)
class Objective:
    """What the step needs besides models: noise and loss options, the training scheduler and its SNR table."""

    noise: NoiseOptions
    loss: LossOptions
    noise_scheduler: object
    snr: torch.Tensor
    alphas_cumprod: torch.Tensor


def batch_latents(models, batch: TrainBatch, latent_cache, generator: torch.Generator) -> torch.Tensor:
    if latent_cache is not None:
        return latent_cache.latents(batch.pixels, batch.paths, batch.original_sizes_wh).to(models.device)
    return models.encode_pixels(np.stack(batch.pixels), generator)


def batch_text(models, batch: TrainBatch, te_cache) -> tuple[torch.Tensor, torch.Tensor]:
    if te_cache is not None:
        context, pooled = te_cache.outputs(batch.captions, batch.paths)
        return context.to(models.device), pooled.to(models.device)
    return models.encode_captions(batch.captions)


def unet_prediction(models, x_t, timesteps, context, pooled, time_ids):
    """UNet forward with SDXL's added conditions (pooled TE2 vector + six size ids)."""
    dtype = models.weight_dtype
    return models.unet(
        x_t.to(dtype),
        timesteps.to(models.device),
        context.to(dtype),
        added_cond_kwargs={"text_embeds": pooled.to(dtype), "time_ids": time_ids.to(models.device, dtype)},
    ).sample


def micro_batch_loss(
    models,
    batch: TrainBatch,
    objective: Objective,
    generator: torch.Generator,
    *,
    latent_cache=None,
    te_cache=None,
    autocast=None,
    timestep: int | None = None,
) -> torch.Tensor:
    """The scalar loss of one batch (not yet divided for gradient accumulation); `timestep` fixes every sample's
    timestep instead of drawing them (validation)."""
    latents = batch_latents(models, batch, latent_cache, generator)
    context, pooled = batch_text(models, batch, te_cache)
    noise = make_noise(latents, objective.noise, generator)
    if timestep is None:
        timesteps = sample_timesteps(latents.shape[0], objective.noise, generator)
    else:
        timesteps = torch.full((latents.shape[0],), int(timestep), dtype=torch.long)
    x_t = noisy_latents(objective.noise_scheduler, latents, noise, timesteps, objective.noise, generator)
    time_ids = torch.tensor(batch.time_ids, dtype=torch.float32)
    with autocast() if autocast is not None else torch.autocast("cpu", enabled=False):
        pred = unet_prediction(models, x_t, timesteps, context, pooled, time_ids)
    target = prediction_target(objective.noise_scheduler, latents, noise, timesteps, objective.noise)
    weights = torch.tensor(batch.loss_weights, dtype=torch.float32)
    return training_loss(
        pred,
        target,
        timesteps.to(pred.device),
        weights,
        objective.loss,
        objective.snr,
        objective.alphas_cumprod,
        mask=_loss_mask(batch),
    )


def _loss_mask(batch: TrainBatch) -> torch.Tensor | None:
    """B x 1 x H x W in [0, 1] from the images' alpha channels (a sample without alpha counts everywhere)."""
    if batch.alpha_masks is None:
        return None
    height, width = batch.pixels[0].shape[:2]
    planes = [
        torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0) if m is not None else torch.ones(height, width)
        for m in batch.alpha_masks
    ]
    return torch.stack(planes)[:, None]
