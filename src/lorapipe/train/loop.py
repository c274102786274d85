"""The training loop: epochs of optimizer-step groups, each group = gradient-accumulated micro-batches.

Read top-down: `run_loop` walks the epochs and hands each group to `optimizer_step`, which runs
`micro_batch_loss` on every micro-batch (latents and text conditioning, cached or fresh, noise, UNet prediction,
loss), averages gradients across processes, clips, steps, then applies Kohya's `scale_weight_norms`
(`apply_max_norm`).

All randomness of a step comes from generators seeded by (seed, step), and a group's batches are a pure function
of (seed, epoch, position), so a resumed run continues on exactly the curve an uninterrupted run would draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lorapipe.errors import TrainingError
from lorapipe.lora.lycoris_network import LycorisKohyaNetwork
from lorapipe.lora.network import ADAPTER_NAME
from lorapipe.train.checkpoints import TrainState
from lorapipe.train.data import TrainBatch, epoch_groups, prefetched
from lorapipe.train.distributed import Processes, average_gradients
from lorapipe.train.loss import LossOptions, training_loss
from lorapipe.train.noise import (
    NoiseOptions,
    make_noise,
    noisy_latents,
    prediction_target,
    sample_timesteps,
    step_generator,
)


@dataclass(frozen=True)
class StepReport:
    step: int
    epoch: int
    updates_done_in_epoch: int
    loss: float
    stop: bool = False  # every process agreed to stop after this step (a stop request reached one of them)
    max_norm: MaxNormReport | None = None  # scale_weight_norms' figures for this step


class NonFiniteLoss(TrainingError):
    """A NaN/inf loss or gradient: the optimizer step was not taken."""


def run_loop(session, plan, start: TrainState, hooks) -> TrainState:
    """Train from `start` to plan.total_steps; `hooks.after_step(report) -> bool` returns True to stop early,
    `hooks.after_epoch(epoch, state)` runs after each full epoch, `hooks.stop_requested()` says whether this
    process was asked to stop. Returns the state reached."""
    step = start.current_step
    cfg = plan.config
    state = start
    for epoch in range(start.current_epoch, plan.epochs + 1):
        groups = epoch_groups(
            plan.scan,
            plan.blueprint,
            epoch=epoch,
            seed=plan.seed,
            accumulation=cfg.gradient_accumulation_steps,
            processes=plan.processes,
        )
        done = start.updates_done_in_epoch if epoch == start.current_epoch else 0
        batches_of = prefetched(
            groups[done:], plan.blueprint, seed=plan.seed, epoch=epoch, first_step=step, total_steps=plan.total_steps
        )
        for offset, batches in enumerate(batches_of):
            outcome = optimizer_step(
                session,
                batches,
                plan.seed,
                step,
                cfg.max_grad_norm,
                processes=plan.processes,
                stop_wanted=hooks.stop_requested(),
                scale_weight_norms=cfg.scale_weight_norms,
            )
            step += 1
            state = TrainState(
                current_step=step,
                current_epoch=epoch,
                updates_done_in_epoch=done + offset + 1,
                dataset_hash=plan.dataset_hash,
            )
            report = StepReport(step, epoch, done + offset + 1, outcome.loss, outcome.stop, outcome.max_norm)
            if hooks.after_step(report, state):
                return state
            if step >= plan.total_steps:
                break
        if state.updates_done_in_epoch >= len(groups):
            state = TrainState(
                current_step=step, current_epoch=epoch + 1, updates_done_in_epoch=0, dataset_hash=plan.dataset_hash
            )
        # As sd-scripts, epoch-end saving/sampling also runs for an epoch cut short by max_train_steps.
        if hooks.after_epoch(epoch, state) or step >= plan.total_steps:
            return state
    return state


@dataclass(frozen=True)
class StepOutcome:
    loss: float  # mean micro-batch loss (over all processes when several train)
    stop: bool  # a stop was requested (here, or in another process)
    max_norm: MaxNormReport | None = None


def optimizer_step(
    session,
    batches,
    seed: int,
    step: int,
    max_grad_norm: float,
    *,
    processes: Processes = Processes(),
    stop_wanted: bool = False,
    scale_weight_norms: float | None = None,
) -> StepOutcome:
    """Forward/backward every micro-batch of the group, average gradients across processes, then clip, step the
    optimizer and the LR schedule."""
    models, accelerator = session.models, session.accelerator
    # The global stream (LoRA dropout) depends only on the step and the process (rank 0 = a one-process run).
    torch.manual_seed(seed * 1_000_003 + step + processes.rank * 7_919_993)
    total, failure = 0.0, None
    for micro, batch in enumerate(batches):
        # Stream numbers count micro-batches across processes, so process 0 of 1 draws what a plain run draws.
        generator = step_generator(seed, step, micro * processes.world + processes.rank)
        loss = micro_batch_loss(
            models,
            batch,
            session.objective,
            generator,
            latent_cache=session.latent_cache,
            te_cache=session.te_cache,
            autocast=accelerator.autocast,
        )
        if not torch.isfinite(loss):
            failure = (
                f"loss is {loss.item()} at step {step + 1} for {', '.join(map(str, batch.paths))}; the "
                'optimizer step was not taken; try a lower learning_rate, mixed_precision = "bf16" or '
                "no_half_vae = true, and check these images"
            )
            if not processes.is_distributed:
                raise NonFiniteLoss(failure)
            break  # the others are waiting in the all-reduce below; fail together after it
        accelerator.backward(loss / len(batches))
        total += loss.item()
    params = [p for g in session.optimizer.param_groups for p in g["params"]]
    mean_loss, stop = total / len(batches), stop_wanted
    if processes.is_distributed:
        agreed = average_gradients(accelerator, params, loss=mean_loss, failed=failure is not None, stop=stop_wanted)
        if failure or agreed.failed_elsewhere:
            session.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(
                failure
                or f"another training process hit a non-finite loss at step {step + 1}; "
                "the optimizer step was not taken; its log names the images"
            )
        mean_loss, stop = agreed.loss, agreed.stop
    if max_grad_norm:
        norm = accelerator.clip_grad_norm_(params, max_grad_norm)
        if session.scaler is None and not math.isfinite(float(norm)):
            session.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(
                f"gradient norm is {float(norm)} at step {step + 1} for "
                f"{', '.join(str(p) for b in batches for p in b.paths)}; the optimizer step was not "
                "taken; try a lower learning_rate"
            )
    session.optimizer.step()
    session.lr_scheduler.step()
    session.optimizer.zero_grad(set_to_none=True)
    # After the step, as sd-scripts: every process holds the same weights, so each applies the same scaling.
    report = apply_max_norm(models.network, scale_weight_norms) if scale_weight_norms else None
    return StepOutcome(loss=mean_loss, stop=stop, max_norm=report)


# ---- one micro-batch ---------------------------------------------------------------------------------------------


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


# ---- max-norm ----------------------------------------------------------------------------------------------------
# Kohya's `scale_weight_norms`: max-norm regularisation of each LoRA module after every optimizer step.
#
# For each module the full update it adds to the base weight, scale x up @ down (scale = alpha / rank), is measured
# by its Frobenius norm; a module above the limit has both of its factors shrunk by the square root of
# limit / norm, so the update's norm lands on the limit. This is sd-scripts' `apply_max_norm_regularization`
# (its clamp of small norms to half the limit keeps a zero update from dividing by zero), and it reports the same
# three figures: modules scaled, mean and largest norm after scaling.


@dataclass(frozen=True)
class MaxNormReport:
    keys_scaled: int
    average_key_norm: float
    max_key_norm: float

    def logs(self) -> dict[str, float]:
        """The names sd-scripts logs to TensorBoard."""
        return {
            "max_norm/keys_scaled": float(self.keys_scaled),
            "max_norm/average_key_norm": self.average_key_norm,
            "max_norm/max_key_norm": self.max_key_norm,
        }


def module_update(down: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor:
    """scale x up @ down in the shape of the base weight (linear, 1x1 conv, or 3x3 conv LoRA)."""
    if down.dim() == 4 and down.shape[2:] == (1, 1) and up.shape[2:] == (1, 1):
        update = (up.flatten(1) @ down.flatten(1))[:, :, None, None]
    elif down.dim() == 4:  # a kxk down followed by a 1x1 up (Kohya's conv LoRA): compose them as convolutions
        update = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
    else:
        update = up @ down
    return update * scale


@torch.no_grad()
def apply_max_norm(network, max_norm: float) -> MaxNormReport:
    """Shrink every LoRA module whose update norm exceeds `max_norm`; returns what sd-scripts reports."""
    if isinstance(network, LycorisKohyaNetwork):  # LyCORIS modules know their own update (LoHa, LoKr, ...)
        return MaxNormReport(*network.apply_max_norm(max_norm))
    scaled, norms = 0, []
    for target in network.targets:
        layer = network.lora_layer(target)
        down, up = layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight
        scale = network.alphas[target.kohya_name] / down.shape[0]
        raw = module_update(down.float(), up.float(), scale).norm()
        norm = raw.clamp(min=max_norm / 2)
        ratio = float(torch.clamp(norm, max=max_norm) / norm)
        if ratio != 1:
            scaled += 1
            down.mul_(ratio**0.5)
            up.mul_(ratio**0.5)
        norms.append(float(raw) * ratio)
    if not norms:
        return MaxNormReport(0, 0.0, 0.0)
    return MaxNormReport(scaled, sum(norms) / len(norms), max(norms))
