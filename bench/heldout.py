"""Held-out denoising loss: does the LoRA make the base model better at denoising new photos of the subject?

Fixed timesteps (sd-scripts' validation points 200/400/600/800), fixed noise and the latent mean, so the only
difference between two evaluations is the weights. Used by `bench/train_learning.py` (which
tests/test_train_learning.py runs); the trainer's own held-out figure is `validation_split`'s loss
(src/lorapipe/train/validation.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from lorapipe.dataset.batches import load_sample
from lorapipe.lora.from_weights import attach_kohya_lora_from_weights
from lorapipe.sdxl.constants import VAE_SCALE_FACTOR
from lorapipe.sdxl.load import load_sdxl_pipeline
from lorapipe.train.loop import unet_prediction
from lorapipe.train.noise import NoiseOptions, make_noise_scheduler
from lorapipe.train.text_encoding import encode_prompts

VALIDATION_TIMESTEPS = (200, 400, 600, 800)


@dataclass(frozen=True)
class HeldoutSample:
    pixels: np.ndarray  # uint8 HxWx3 at bucket size
    caption: str
    time_ids: tuple[int, ...]


def heldout_samples(dataset_items, blueprint) -> list[HeldoutSample]:
    """Load items (dataset ImageItems) at their bucket size with their captions, no augmentation randomness."""
    out = []
    for item in dataset_items:
        s = load_sample(item, blueprint, 1, random.Random(0))
        out.append(HeldoutSample(s.pixels, s.caption, (*s.original_size, *s.crop_top_left, *s.target_size)))
    return out


@torch.no_grad()
def denoising_loss(pipe, samples: list[HeldoutSample], *, seed: int = 0, timesteps=VALIDATION_TIMESTEPS) -> float:
    """Mean epsilon-MSE of `pipe.unet` over samples x timesteps with fixed noise."""
    scheduler = make_noise_scheduler(NoiseOptions())
    losses = []
    device = pipe.unet.device
    for index, sample in enumerate(samples):
        x = torch.from_numpy(np.array(sample.pixels[None])).permute(0, 3, 1, 2).float().to(device) / 127.5 - 1
        latents = pipe.vae.encode(x.to(pipe.vae.dtype)).latent_dist.mean.float() * VAE_SCALE_FACTOR
        enc = encode_prompts(pipe.text_encoder, pipe.text_encoder_2, pipe.tokenizer, pipe.tokenizer_2, [sample.caption])
        for t in timesteps:
            gen = torch.Generator().manual_seed(seed * 100_003 + index * 1009 + t)
            noise = torch.randn(latents.shape, generator=gen).to(device)
            tt = torch.tensor([t])
            x_t = scheduler.add_noise(latents, noise, tt)
            holder = _Holder(pipe.unet, pipe.unet.dtype, device)
            pred = unet_prediction(holder, x_t, tt, enc.context, enc.pooled, torch.tensor([sample.time_ids]))
            losses.append(torch.nn.functional.mse_loss(pred.float(), noise).item())
    return float(np.mean(losses))


@dataclass
class _Holder:
    unet: object
    weight_dtype: torch.dtype
    device: torch.device


def compare_with_lora(base_model: str, lora_path: Path, samples: list[HeldoutSample], *, seed: int = 0):
    """(loss without LoRA, loss with LoRA) on the same samples, timesteps and noise."""
    pipe = load_sdxl_pipeline(base_model)
    base = denoising_loss(pipe, samples, seed=seed)
    tensors = load_file(str(lora_path))
    # Each module's rank and alpha come from the file (sd-scripts' create_network_from_weights).
    attach_kohya_lora_from_weights(pipe.unet, pipe.text_encoder, pipe.text_encoder_2, tensors, source=str(lora_path))
    with_lora = denoising_loss(pipe, samples, seed=seed)
    return base, with_lora
