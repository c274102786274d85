"""The training loss as sd-scripts computes it (library/custom_train_functions.py): element loss, per-sample
weights, SNR terms."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LOSS_TYPES = ("l2", "l1", "huber", "smooth_l1")
HUBER_SCHEDULES = ("constant", "exponential", "snr")
_SNR_CLAMP = 1000.0


@dataclass(frozen=True)
class LossOptions:
    """The Kohya loss keys (defaults = sd-scripts defaults)."""

    loss_type: str = "l2"
    huber_schedule: str = "snr"
    huber_c: float = 0.1
    huber_scale: float = 1.0
    min_snr_gamma: float = 0.0
    scale_v_pred_loss_like_noise_pred: bool = False
    v_pred_like_loss: float = 0.0
    debiased_estimation_loss: bool = False
    v_parameterization: bool = False


def huber_c_per_sample(timesteps: torch.Tensor, options: LossOptions, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sd-scripts' `get_huber_threshold_if_needed`: one c per sample from the huber schedule."""
    t = timesteps.cpu()
    if options.huber_schedule == "constant":
        return torch.full(t.shape, options.huber_c * options.huber_scale)
    if options.huber_schedule == "exponential":
        alpha = -math.log(options.huber_c) / 1000.0
        return torch.exp(-alpha * t.float()) * options.huber_scale
    # "snr": note sd-scripts does not apply huber_scale here.
    a = alphas_cumprod.cpu()[t]
    sigmas = ((1.0 - a) / a) ** 0.5
    return (1.0 - options.huber_c) / (1.0 + sigmas) ** 2 + options.huber_c


def element_loss(
    pred: torch.Tensor, target: torch.Tensor, options: LossOptions, huber_c: torch.Tensor | None
) -> torch.Tensor:
    """Element-wise loss in fp32 (`conditional_loss`)."""
    pred, target = pred.float(), target.float()
    if options.loss_type == "l2":
        return torch.nn.functional.mse_loss(pred, target, reduction="none")
    if options.loss_type == "l1":
        return torch.nn.functional.l1_loss(pred, target, reduction="none")
    c = huber_c.to(pred.device).view(-1, *([1] * (pred.ndim - 1)))
    root = torch.sqrt((pred - target) ** 2 + c**2) - c
    return 2 * c * root if options.loss_type == "huber" else 2 * root


def snr_weights(timesteps: torch.Tensor, snr: torch.Tensor, options: LossOptions) -> torch.Tensor:
    """The product of every enabled `post_process_loss` multiplier, per sample (v_pred_like_loss is additive)."""
    s = snr.to(timesteps.device)[timesteps].float()
    weight = torch.ones_like(s)
    if options.min_snr_gamma:
        gamma_snr = torch.minimum(s, torch.full_like(s, options.min_snr_gamma))
        weight = weight * (gamma_snr / (s + 1) if options.v_parameterization else gamma_snr / s)
    if options.scale_v_pred_loss_like_noise_pred:
        clamped = torch.clamp(s, max=_SNR_CLAMP)
        weight = weight * clamped / (clamped + 1)
    if options.debiased_estimation_loss:
        clamped = torch.clamp(s, max=_SNR_CLAMP)
        weight = weight * (1.0 / (clamped + 1) if options.v_parameterization else 1.0 / torch.sqrt(clamped))
    return weight


def training_loss(pred, target, timesteps, loss_weights, options: LossOptions, snr, alphas_cumprod, mask=None):
    """Scalar loss: element loss (x mask) -> mean per sample -> x loss weight -> SNR weightings -> batch mean.

    `mask`: B x 1 x H x W in [0, 1] at pixel size (alpha_mask), shrunk to the latent size by area averaging and
    multiplied in before the per-sample mean, as sd-scripts' apply_masked_loss."""
    huber_c = None
    if options.loss_type in ("huber", "smooth_l1"):
        huber_c = huber_c_per_sample(timesteps, options, alphas_cumprod)
    elements = element_loss(pred, target, options, huber_c)
    if mask is not None:
        mask = torch.nn.functional.interpolate(
            mask.to(elements.device, elements.dtype), size=elements.shape[2:], mode="area"
        )
        elements = elements * mask
    per_sample = elements.mean(dim=list(range(1, pred.ndim)))
    per_sample = per_sample * loss_weights.to(per_sample.device).float()
    per_sample = per_sample * snr_weights(timesteps.to(per_sample.device), snr, options)
    if options.v_pred_like_loss:
        s = torch.clamp(snr.to(per_sample.device)[timesteps.to(per_sample.device)], max=_SNR_CLAMP)
        per_sample = per_sample + options.v_pred_like_loss * per_sample / (s / (s + 1))
    return per_sample.mean()
