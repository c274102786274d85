"""The training loop: epochs of optimizer-step groups, each group = gradient-accumulated micro-batches.

All randomness of a step comes from generators seeded by (seed, step), and a group's batches are a pure function
of (seed, epoch, position), so a resumed run continues on exactly the curve an uninterrupted run would draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lorapipe.errors import TrainingError
from lorapipe.train.checkpoints import TrainState
from lorapipe.train.data import epoch_groups, prefetched
from lorapipe.train.distributed import Processes, average_gradients
from lorapipe.train.max_norm import MaxNormReport, apply_max_norm
from lorapipe.train.noise import step_generator
from lorapipe.train.step import micro_batch_loss


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
