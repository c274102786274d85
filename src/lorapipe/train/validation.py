"""Validation loss on the images `validation_split` holds out, as sd-scripts computes it.

Each held-out batch is scored at fixed timesteps (4 evenly spaced interior points of [min_timestep,
max_timestep]: 200/400/600/800 by default) with noise from generators seeded by validation_seed, with the LoRA's
dropouts off and no gradients, so two evaluations differ only by the weights. When it runs: every
validate_every_n_steps steps, and every validate_every_n_epochs epochs (each epoch when neither is set).
Nothing here touches the global RNG, so validating never changes the training curve.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import torch

from lorapipe.train.data import load_batch
from lorapipe.train.loop import micro_batch_loss
from lorapipe.train.noise import step_generator


@dataclass(frozen=True)
class ValidationPlan:
    """What to validate on and when (built once per run)."""

    items: tuple  # held-out ImageItems
    seed: int
    every_n_steps: int | None
    every_n_epochs: int | None
    max_batches: int | None
    timesteps: tuple[int, ...]

    @property
    def active(self) -> bool:
        return bool(self.items)

    def due_after_step(self, step: int) -> bool:
        return self.active and bool(self.every_n_steps) and step % self.every_n_steps == 0

    def due_after_epoch(self, epoch: int) -> bool:
        if not self.active:
            return False
        if self.every_n_epochs:
            return epoch % self.every_n_epochs == 0
        return not self.every_n_steps  # sd-scripts validates each epoch unless told otherwise


def validation_plan(plan) -> ValidationPlan:
    cfg, blueprint = plan.config, plan.blueprint
    seed = blueprint.validation_seed if blueprint.validation_seed is not None else plan.seed
    low = int(cfg.min_timestep or 0)
    high = int(cfg.max_timestep or 1000)
    points = [round(low + (high - low) * k / 5) for k in range(1, 5)]  # linspace(low, high, 6)[1:-1]
    return ValidationPlan(
        items=tuple(plan.scan.validation_items),
        seed=int(seed),
        every_n_steps=cfg.validate_every_n_steps,
        every_n_epochs=cfg.validate_every_n_epochs,
        max_batches=cfg.max_validation_steps,
        timesteps=tuple(points),
    )


def validation_batches(vplan: ValidationPlan, blueprint) -> list[list]:
    """Held-out items in fixed batches: by dataset and bucket, then file name; at most max_batches of them."""
    by_bucket = defaultdict(list)
    for item in sorted(vplan.items, key=lambda i: (i.subset.dataset_index, i.bucket, i.path.name)):
        by_bucket[(item.subset.dataset_index, item.bucket)].append(item)
    batches = []
    for (index, _), members in sorted(by_bucket.items()):
        size = blueprint.batch_size_of(index)
        batches += [members[i : i + size] for i in range(0, len(members), size)]
    return batches[: vplan.max_batches] if vplan.max_batches else batches


@torch.no_grad()
def validation_loss(session, plan, vplan: ValidationPlan) -> float:
    """Mean loss over the held-out batches x fixed timesteps."""
    losses = []
    with _dropouts_off(session.models):
        for index, items in enumerate(validation_batches(vplan, plan.blueprint)):
            batch = load_batch(items, plan.blueprint, seed=vplan.seed, epoch=0, index=index)
            for t in vplan.timesteps:
                generator = step_generator(vplan.seed, index, t)
                loss = micro_batch_loss(
                    session.models,
                    batch,
                    session.objective,
                    generator,
                    latent_cache=session.latent_cache,
                    te_cache=session.te_cache,
                    autocast=session.accelerator.autocast,
                    timestep=t,
                )
                losses.append(float(loss))
    finite = [x for x in losses if math.isfinite(x)]
    return sum(finite) / len(finite) if finite else float("nan")


class _dropouts_off:
    """Put every module that is in training mode (the LoRA layers) in eval mode, and back afterwards."""

    def __init__(self, models):
        self.modules = [
            m
            for model in (models.unet, models.text_encoder, models.text_encoder_2)
            for m in model.modules()
            if m.training
        ]

    # The flag is set on each module alone: Module.train() recurses and would switch frozen children too.
    def __enter__(self):
        for module in self.modules:
            module.training = False
        return self

    def __exit__(self, *exc):
        for module in self.modules:
            module.training = True
        return False
