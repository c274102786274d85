"""Render every prompt for every checkpoint with one loaded pipeline.

The Generator keeps one fused LoRA set; requests naming the same `<lora:...>` reuse it, so the set is switched in
place once per checkpoint (checkpoints outer, prompts inner). Each prompt is one request of `images_per_prompt`
images, cut into batches of `batch_size`; the progress bar counts images.
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
) -> tuple[dict[tuple[str, int], Rendered], dict[str, float]]:
    """({(checkpoint label, prompt index): Rendered}, {checkpoint label: seconds spent rendering})."""
    from lorapipe.generate.generator import GenerationRequest

    rendered: dict[tuple[str, int], Rendered] = {}
    seconds: dict[str, float] = {}
    for checkpoint in checkpoints:
        started = time.perf_counter()
        tag = "" if checkpoint.is_base else f"<lora:{checkpoint.label}:1> "
        for prompt in prompts:
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
                if on_images:
                    on_images(size)
            rendered[(checkpoint.label, prompt.index)] = Rendered(
                checkpoint.label, prompt.index, tuple(seeds), tuple(images)
            )
        seconds[checkpoint.label] = time.perf_counter() - started
    return rendered, seconds


def _generate(generator, request, checkpoint: Checkpoint):
    try:
        result = generator.generate(request)
    except GenerationError as exc:
        raise EvaluationError(f"{checkpoint.path or checkpoint.label}: the generator refused it ({exc})") from exc
    if result.warnings and not checkpoint.is_base:
        # "Networks not found": the registry skipped the file (bad header, name clash); never score the base as it.
        raise EvaluationError(f"{checkpoint.path}: not applied ({'; '.join(result.warnings)}); check the file")
    return result
