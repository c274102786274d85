"""Render every prompt for every checkpoint with one loaded pipeline.

The Generator keeps one fused LoRA set; requests naming the same `<lora:...>` reuse it, so the set is switched in
place once per checkpoint (checkpoints outer, prompts inner). Each prompt is one request of `images_per_prompt`
images, cut into batches of `batch_size`; the progress bar counts images.

A checkpoint the generator refuses (a file that does not fit the base model, a broken header) is set aside with the
reason and the others are still rendered: one bad save must not cost the evaluation of a whole run. The base model
renders first, so settings the generator rejects fail before any LoRA is blamed for them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lorapipe.errors import EvaluationError, GenerationError
from lorapipe.evaluate.checkpoints import Checkpoint
from lorapipe.evaluate.prompts import EvalPrompt


@dataclass(frozen=True)
class RenderSettings:
    """How every image is rendered (the same for every checkpoint, so only the LoRA differs)."""

    # Smaller than SDXL's native 1024 px: CLIP and DINOv2 look at 224 px, and every image is paid per checkpoint.
    width: int = 768
    height: int = 768
    steps: int = 20
    cfg_scale: float = 7.0
    sampler_name: str = "DPM++ 2M"
    scheduler: str | None = "Karras"
    negative_prompt: str = ""
    images_per_prompt: int = 2
    batch_size: int = 2


@dataclass(frozen=True)
class Refused:
    """A checkpoint the generator would not apply, and why (its message)."""

    checkpoint: Checkpoint
    reason: str


@dataclass(frozen=True)
class Rendered:
    """The images of one checkpoint and prompt, with their seeds."""

    checkpoint: str
    prompt: int
    seeds: tuple[int, ...]
    images: tuple


def render_all(
    generator,
    checkpoints: Sequence[Checkpoint],
    prompts: Sequence[EvalPrompt],
    settings: RenderSettings,
    *,
    on_images: Callable[[int], None] | None = None,
) -> tuple[dict[tuple[str, int], Rendered], dict[str, float], tuple[Refused, ...]]:
    """({(checkpoint label, prompt index): Rendered}, {checkpoint label: seconds spent rendering}, the refused
    checkpoints); a refused checkpoint has no images and no time."""
    rendered: dict[tuple[str, int], Rendered] = {}
    seconds: dict[str, float] = {}
    refused: list[Refused] = []
    for checkpoint in checkpoints:
        started = time.perf_counter()
        counted = [0]  # images of this checkpoint already on the bar

        def count(n: int, counted=counted) -> None:
            counted[0] += n
            if on_images:
                on_images(n)

        try:
            images = {
                (checkpoint.label, prompt.index): _render_prompt(generator, checkpoint, prompt, settings, count)
                for prompt in prompts
            }
        except _CheckpointRefused as exc:
            refused.append(Refused(checkpoint, str(exc)))
            if on_images:  # the bar still ends at its total
                on_images(len(prompts) * settings.images_per_prompt - counted[0])
            continue
        rendered.update(images)
        seconds[checkpoint.label] = time.perf_counter() - started
    return rendered, seconds, tuple(refused)


class _CheckpointRefused(Exception):
    """The generator would not apply a checkpoint (raised before any of its images count)."""


def _render_prompt(generator, checkpoint: Checkpoint, prompt: EvalPrompt, settings: RenderSettings, count):
    from lorapipe.generate.generator import GenerationRequest

    tag = "" if checkpoint.is_base else f"<lora:{checkpoint.label}:1> "
    images, seeds = [], []
    for first in range(0, settings.images_per_prompt, settings.batch_size):
        size = min(settings.batch_size, settings.images_per_prompt - first)
        request = GenerationRequest(
            prompt=tag + prompt.text,
            negative_prompt=settings.negative_prompt,
            steps=settings.steps,
            cfg_scale=settings.cfg_scale,
            width=settings.width,
            height=settings.height,
            seed=prompt.seed + first,
            batch_size=size,
            sampler_name=settings.sampler_name,
            scheduler=settings.scheduler,
        )
        result = _generate(generator, request, checkpoint)
        images += result.images
        seeds += result.seeds
        count(size)
    return Rendered(checkpoint.label, prompt.index, tuple(seeds), tuple(images))


def _generate(generator, request, checkpoint: Checkpoint):
    try:
        result = generator.generate(request)
    except GenerationError as exc:
        if checkpoint.is_base:  # the settings or the base model: no checkpoint can be evaluated
            raise EvaluationError(
                f"no-LoRA images: the generator refused the request ({exc}); check the render settings"
            ) from exc
        raise _CheckpointRefused(str(exc)) from exc
    if result.warnings and not checkpoint.is_base:
        # "LoRA ...: not applied" / "Networks not found": the file was left out; never score the base as it.
        raise _CheckpointRefused("; ".join(result.warnings))
    return result
