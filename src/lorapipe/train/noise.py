"""Noise, timesteps and noisy latents exactly as sd-scripts builds them (sd-scripts library/train_util.py).

Every random draw takes an explicit `torch.Generator`, so a step's randomness is a pure function of its seed and
a resumed run draws the same noise as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorapipe.sdxl.constants import BETA_END, BETA_SCHEDULE, BETA_START, NUM_TRAIN_TIMESTEPS


@dataclass(frozen=True)
class NoiseOptions:
    """The Kohya noise keys (defaults = sd-scripts defaults: all off)."""

    noise_offset: float = 0.0
    noise_offset_random_strength: bool = False
    adaptive_noise_scale: float = 0.0
    multires_noise_iterations: int = 0
    multires_noise_discount: float = 0.3
    ip_noise_gamma: float = 0.0
    ip_noise_gamma_random_strength: bool = False
    min_timestep: int = 0
    max_timestep: int = NUM_TRAIN_TIMESTEPS
    zero_terminal_snr: bool = False
    v_parameterization: bool = False


def make_noise_scheduler(options: NoiseOptions):
    """sd-scripts' training scheduler: DDPM, scaled-linear 0.00085-0.012, 1000 steps, no clipping."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule=BETA_SCHEDULE,
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        clip_sample=False,
        prediction_type="v_prediction" if options.v_parameterization else "epsilon",
        rescale_betas_zero_snr=options.zero_terminal_snr,
    )
    return scheduler


def snr_table(noise_scheduler) -> torch.Tensor:
    """SNR_t = alpha_bar_t / (1 - alpha_bar_t) for every training timestep."""
    alphas_cumprod = noise_scheduler.alphas_cumprod.double()
    return (alphas_cumprod / (1.0 - alphas_cumprod)).float()


def sample_timesteps(batch: int, options: NoiseOptions, generator: torch.Generator) -> torch.Tensor:
    """Uniform integers in [min_timestep, max_timestep); every sample gets max_timestep if min >= max."""
    low, high = int(options.min_timestep), int(options.max_timestep)
    if low >= high:
        return torch.full((batch,), high, dtype=torch.long)
    return torch.randint(low, high, (batch,), generator=generator, dtype=torch.long)


def pyramid_noise_like(noise: torch.Tensor, generator: torch.Generator, iterations: int, discount: float):
    """sd-scripts' multires noise: add upsampled low-resolution noise at shrinking scales, renormalise."""
    b, c, h, w = noise.shape
    upsample = torch.nn.Upsample(size=(h, w), mode="bilinear")
    for i in range(iterations):
        r = torch.rand(1, generator=generator).item() * 2 + 2  # uniform in [2, 4)
        wi, hi = max(1, int(w / (r**i))), max(1, int(h / (r**i)))
        low = torch.randn(b, c, hi, wi, generator=generator, dtype=noise.dtype)
        noise = noise + upsample(low.to(noise.device)) * discount**i
        if wi == 1 or hi == 1:
            break
    return noise / noise.std()


def make_noise(latents: torch.Tensor, options: NoiseOptions, generator: torch.Generator) -> torch.Tensor:
    """Base Gaussian noise plus offset / adaptive offset / multires, in sd-scripts' order (§4.3)."""
    shape = latents.shape
    noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)
    if options.noise_offset:
        offset = options.noise_offset
        if options.noise_offset_random_strength:
            offset = torch.rand(1, generator=generator).item() * offset
        if options.adaptive_noise_scale:
            latent_mean = latents.float().mean(dim=(2, 3), keepdim=True).abs()
            offset = torch.clamp(offset + options.adaptive_noise_scale * latent_mean, min=0.0).to(latents.dtype)
        per_channel = torch.randn((shape[0], shape[1], 1, 1), generator=generator).to(latents.device, latents.dtype)
        noise = noise + offset * per_channel
    if options.multires_noise_iterations:
        noise = pyramid_noise_like(noise, generator, options.multires_noise_iterations, options.multires_noise_discount)
    return noise


def noisy_latents(noise_scheduler, latents, noise, timesteps, options: NoiseOptions, generator: torch.Generator):
    """x_t from x_0; with ip_noise_gamma the corruption noise gets an extra term while the target stays `noise`."""
    corruption = noise
    if options.ip_noise_gamma:
        gamma = options.ip_noise_gamma
        if options.ip_noise_gamma_random_strength:
            gamma = torch.rand(1, generator=generator).item() * gamma
        extra = torch.randn(noise.shape, generator=generator, dtype=torch.float32).to(noise.device, noise.dtype)
        corruption = noise + gamma * extra
    return noise_scheduler.add_noise(latents, corruption, timesteps.to(latents.device))


def prediction_target(noise_scheduler, latents, noise, timesteps, options: NoiseOptions) -> torch.Tensor:
    """epsilon, or the velocity sqrt(a)e - sqrt(1-a)x0 with v_parameterization."""
    if options.v_parameterization:
        return noise_scheduler.get_velocity(latents, noise, timesteps.to(latents.device))
    return noise


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator whose state depends only on (seed, step, stream): resume-exact randomness."""
    mixed = (seed * 1_000_003 + step * 7919 + stream * 104_729) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)
