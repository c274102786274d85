"""The Generator: one SDXL pipeline, its fused LoRA set, and A1111 semantics for prompts, seeds and samplers.

One caller at a time (the server's worker, or the CLI): a lock makes concurrent calls wait rather than corrupt
the fused set or the shared scheduler.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from lorapipe.errors import GenerationError
from lorapipe.generate.control import JobControl
from lorapipe.generate.hires import HiresFix, HiresTarget, check_hires, hires_infotext, hires_target
from lorapipe.generate.infotext import create_infotext, lora_hashes_value
from lorapipe.generate.inpaint import (
    BLANK_MASK_WARNING,
    InpaintOptions,
    check_inpaint,
    inpaint_infotext,
    is_blank,
    prepare_mask,
)
from lorapipe.generate.latents import decode_latents, slerp
from lorapipe.generate.lora_set import ActiveLora, FusedLoraSet
from lorapipe.generate.model_info import ModelInfo, describe_model
from lorapipe.generate.prompt_syntax import LoraTag, parse_extra_networks
from lorapipe.generate.resize import check_resize_mode, fit
from lorapipe.generate.samplers import ResolvedSampler, build_scheduler, resolve_sampler
from lorapipe.registry import LoraRegistry

MAX_SEED = 4294967294  # A1111 draws random seeds from [0, 4294967294)
SEED_LIMIT = 2**64  # torch generators take seeds below 2**64; each image of a batch adds one
MAX_LORAS_PER_REQUEST = 16  # distinct LoRAs in one request (repeated tags of one LoRA count once)
DEFAULT_DENOISING_STRENGTH = 0.75  # A1111's img2img API default


@dataclass(frozen=True)
class GenerationRequest:
    """A txt2img (or, with `init_images`, img2img; with `inpaint` too, inpainting) request in A1111's terms."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 1024
    height: int = 1024
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    batch_size: int = 1
    n_iter: int = 1
    sampler_name: str | None = "Euler"
    scheduler: str | None = None
    init_images: tuple = ()  # PIL images; non-empty means img2img
    denoising_strength: float = DEFAULT_DENOISING_STRENGTH
    apply_loras: bool = True  # False = A1111 `disable_extra_networks`: tags are removed but not applied
    hires: HiresFix | None = None  # A1111 `enable_hr` (txt2img only)
    inpaint: InpaintOptions | None = None  # A1111's mask group (img2img only)
    resize_mode: int = 0  # how init images of another size reach width x height (generate/resize.py)


@dataclass(frozen=True)
class GenerationResult:
    """Images with their infotexts, and what A1111 reports about the run."""

    images: tuple
    infotexts: tuple[str, ...]
    seeds: tuple[int, ...]
    subseeds: tuple[int, ...]
    request: GenerationRequest
    sampler_name: str
    schedule_label: str
    loras: tuple[ActiveLora, ...]
    warnings: tuple[str, ...]
    interrupted: bool
    job_timestamp: str
    model: ModelInfo = field(repr=False)
    hires_target: HiresTarget | None = None  # None: no hires pass ran (not asked, or target = first-pass size)
    extra_params: Mapping[str, object] = field(default_factory=dict)  # A1111 extra_generation_params


@dataclass(frozen=True)
class _HiresPlan:
    """What the hires pass of one request does, worked out once before sampling."""

    options: HiresFix
    target: HiresTarget
    resolved: ResolvedSampler
    loras: tuple[ActiveLora, ...]
    prompt: str  # as written (tags kept), for the infotext
    negative_prompt: str
    text: str  # tags removed, for encoding
    negative_text: str
    steps: int  # num_inference_steps handed to the img2img pipeline
    steps_run: int  # of which diffusers runs int(steps * strength)
    latent: bool  # a latent upscaler (else an image upscaler)
    warnings: tuple[str, ...]
    conds: tuple = ()  # (positive, negative) PromptEmbeds, encoded with the hires LoRA set


class Generator:
    """Owns one SDXL pipeline; `generate()` turns a GenerationRequest into images with A1111 infotexts."""

    def __init__(self, pipe, *, model: ModelInfo, registry: LoraRegistry | None = None):
        self.pipe = pipe
        self.model = model
        for component in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            # Inference only: a parameter that needs grad can take other kernels (pixels ~1/255 apart), so it is
            # switched off once here and nothing (LoRA merging included) switches it back on.
            component.requires_grad_(False)
        self.registry = registry or LoraRegistry(None)
        self.loras = FusedLoraSet(pipe, verify=self.registry.verify_for_loading)
        self._lock = threading.Lock()
        self._schedulers: dict[tuple[str, str], object] = {}
        self._base_scheduler_config = dict(pipe.scheduler.config)
        self._img2img = None
        self._inpaint = None

    @classmethod
    def load(
        cls,
        base_model: str,
        *,
        lora_dir: str | Path | None = None,
        device: str | None = None,
        dtype: str | None = None,
        hash_model: bool = True,
    ) -> Generator:
        """Load `base_model` (diffusers folder, single file or hub id) onto `device` (default: cuda if present)."""
        import torch

        from lorapipe.sdxl.load import load_sdxl_pipeline

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or ("fp16" if device.startswith("cuda") else "fp32")
        registry = LoraRegistry(lora_dir) if lora_dir else None
        pipe = load_sdxl_pipeline(str(base_model), dtype=dtype, random_device=device)
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
        return cls(pipe, model=describe_model(str(base_model), hash_weights=hash_model), registry=registry)

    @property
    def device(self):
        # The first parameter's device, not `unet.device`: diffusers' ModelMixin.device also walks every module
        # for group-offloading hooks (lorapipe uses none), a millisecond per call on SDXL.
        return next(self.pipe.unet.parameters()).device

    def check(self, request: GenerationRequest) -> None:
        """Raise GenerationError naming the field when `request` cannot run (the server calls it before queueing)."""
        check_request(request)

    def generate(self, request: GenerationRequest, control: JobControl | None = None) -> GenerationResult:
        """Run a request; raises GenerationError for bad input and GenerationCancelled when cancelled."""
        check_request(request)
        control = control or JobControl()
        with self._lock:
            return self._generate(request, control)

    # -- internals ----------------------------------------------------------------------------------------
    def _generate(self, request: GenerationRequest, control: JobControl) -> GenerationResult:
        import torch

        from lorapipe.generate.encode import encode_pair

        resolved = resolve_sampler(request.sampler_name, request.scheduler)
        parsed = parse_extra_networks(request.prompt)
        negative_text = parse_extra_networks(request.negative_prompt).text
        active, warnings = self._resolve_loras(parsed.loras) if request.apply_loras else ((), [])
        plan = self._hires_plan(request, resolved) if request.hires else None
        passes = 2 if plan else 1  # A1111 doubles job_count for hires fix, so progress covers both passes
        control.begin(request.n_iter * passes)
        if plan:  # hires conditioning is encoded with the hires LoRA set (the same set unless hr_prompt differs)
            warnings += [w for w in plan.warnings if w not in warnings]
            plan = replace(plan, loras=self._apply_loras(plan.loras, warnings))
            plan = replace(plan, conds=encode_pair(plan.text, plan.negative_text, self.pipe))
        active = self._apply_loras(active, warnings)
        pipe = self._pipeline_for(request)
        pipe.scheduler = self._scheduler(resolved)

        total = request.batch_size * request.n_iter
        seed = _fixed_seed(request.seed)
        subseed = _fixed_seed(request.subseed)
        seeds = [seed + (i if request.subseed_strength == 0 else 0) for i in range(total)]
        subseeds = [subseed + i for i in range(total)]

        positive, negative = encode_pair(parsed.text, negative_text, self.pipe)
        mask = prepare_mask(request.inpaint) if request.inpaint else None
        if mask is not None and is_blank(mask):
            warnings.append(BLANK_MASK_WARNING)
        images = []
        job_timestamp = time.strftime("%Y%m%d%H%M%S")
        for iteration in range(request.n_iter):
            if control.interrupted:
                break
            batch = slice(iteration * request.batch_size, (iteration + 1) * request.batch_size)
            control.begin_batch(iteration * passes, _steps_run(request))
            if plan is None:
                images += self._run_batch(
                    pipe, request, positive, negative, seeds[batch], subseeds[batch], control, mask=mask
                )
                continue
            self._apply_loras(active, warnings)  # no-op unless the previous hires pass switched the set
            first = self._run_batch(
                pipe,
                request,
                positive,
                negative,
                seeds[batch],
                subseeds[batch],
                control,
                output_type="latent" if plan.latent else "pil",
            )
            if control.should_stop_sampling():  # interrupted or skipped: A1111 returns the first pass as it is
                images += decode_latents(pipe, first) if plan.latent else first
                continue
            control.begin_batch(iteration * passes + 1, plan.steps_run)
            images += self._run_hires_pass(plan, request, first, seeds[batch], control)
        extra = self._extra_params(request, resolved, plan, active)
        infotexts = tuple(
            self._infotext(request, resolved, seeds[i], subseeds[i], plan, extra) for i in range(len(images))
        )
        for image, text in zip(images, infotexts):
            image.info["parameters"] = text
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand back activations so memory stays flat across many requests
        return GenerationResult(
            images=tuple(images),
            infotexts=infotexts,
            seeds=tuple(seeds),
            subseeds=tuple(subseeds),
            request=request,
            sampler_name=resolved.sampler.name,
            schedule_label=resolved.schedule_label,
            loras=tuple(active),
            warnings=tuple(warnings),
            interrupted=control.interrupted,
            job_timestamp=job_timestamp,
            model=self.model,
            hires_target=plan.target if plan else None,
            extra_params=MappingProxyType(extra),
        )

    def _run_batch(self, pipe, request, positive, negative, seeds, subseeds, control, output_type="pil", mask=None):
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        size = len(seeds)
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        if mask is not None:
            return self._run_inpaint_batch(pipe, request, positive, negative, seeds, generators, control, mask)
        embed_dtype = self.pipe.unet.dtype
        kwargs = {}
        if request.init_images:
            kwargs["image"] = [
                self._fitted(request.init_images[i % len(request.init_images)], request) for i in range(size)
            ]
            kwargs["strength"] = request.denoising_strength
        else:
            shape = (
                size,
                self.pipe.unet.config.in_channels,
                request.height // self.pipe.vae_scale_factor,
                request.width // self.pipe.vae_scale_factor,
            )
            latents = randn_tensor(shape, generator=generators, device=self.device, dtype=embed_dtype)
            if request.subseed_strength > 0:
                sub_generators = [torch.Generator("cpu").manual_seed(s) for s in subseeds]
                sub = randn_tensor(shape, generator=sub_generators, device=self.device, dtype=embed_dtype)
                latents = slerp(request.subseed_strength, latents, sub)
            kwargs["latents"] = latents
            kwargs["width"], kwargs["height"] = request.width, request.height
        return self._denoise(
            pipe,
            positive,
            negative,
            generators,
            control,
            steps=_scheduler_steps(request),
            cfg_scale=request.cfg_scale,
            output_type=output_type,
            **kwargs,
        )

    def _run_inpaint_batch(self, pipe, request, positive, negative, seeds, generators, control, mask) -> list:
        from lorapipe.generate.inpaint import inpaint_batch

        inits = [request.init_images[i % len(request.init_images)] for i in range(len(seeds))]
        if is_blank(mask):  # nothing to repaint: the init image as whole-picture inpainting would return it
            return [self._fitted(image, request) for image in inits]
        if not request.inpaint.only_masked and request.resize_mode:
            # As A1111: the picture and its mask are brought to the size the same way before inpainting.
            size = inits[0].size
            mask = mask if mask.size == size else mask.resize(size)
            mask = fit(mask, request.width, request.height, request.resize_mode, self.pipe.image_processor)
            mask = mask.convert("L")  # diffusers' fill pastes onto an RGB canvas
            inits = [self._fitted(image, request) for image in inits]

        def denoise(**kwargs):
            return self._denoise(
                pipe,
                positive,
                negative,
                generators,
                control,
                steps=_scheduler_steps(request),
                cfg_scale=request.cfg_scale,
                strength=request.denoising_strength,
                **kwargs,
            )

        return inpaint_batch(
            pipe, request.inpaint, mask, inits, width=request.width, height=request.height, seeds=seeds, denoise=denoise
        )

    def _run_hires_pass(self, plan: _HiresPlan, request, first, seeds, control) -> list:
        """Upscale the first pass and denoise it again at the target size (A1111 sample_hr_pass)."""
        import torch

        from lorapipe.generate.hires import upscale_image, upscale_latents

        self._apply_loras(plan.loras, [])  # warned about when the plan was applied first
        upscaler = plan.options.upscaler
        image = (
            upscale_latents(first, plan.target, upscaler)
            if plan.latent
            else [upscale_image(picture, plan.target, upscaler) for picture in first]
        )
        img2img = self._img2img_pipeline()
        img2img.scheduler = self._scheduler(plan.resolved)
        # Fresh generators from the same seeds, as A1111 draws the hires noise from the image seeds again.
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        positive, negative = plan.conds
        return self._denoise(
            img2img,
            positive,
            negative,
            generators,
            control,
            steps=plan.steps,
            cfg_scale=request.cfg_scale,
            image=image,
            strength=plan.options.denoising_strength,
        )

    def _fitted(self, image, request: GenerationRequest):
        """An init image at the request's size, brought there as its resize_mode says."""
        return fit(image.convert("RGB"), request.width, request.height, request.resize_mode, self.pipe.image_processor)

    def _denoise(self, pipe, positive, negative, generators, control, *, steps, cfg_scale, output_type="pil", **kwargs):
        size = len(generators)

        def on_step_end(pipeline, step_index, _timestep, tensors):
            control.on_step(step_index + 1)
            if control.should_stop_sampling():
                pipeline._interrupt = True  # diffusers skips the remaining steps, then decodes what it has
            return tensors

        output = pipe(
            prompt_embeds=positive.hidden.repeat(size, 1, 1),
            pooled_prompt_embeds=positive.pooled.repeat(size, 1),
            negative_prompt_embeds=negative.hidden.repeat(size, 1, 1),
            negative_pooled_prompt_embeds=negative.pooled.repeat(size, 1),
            num_inference_steps=steps,
            guidance_scale=cfg_scale,
            generator=generators,
            callback_on_step_end=on_step_end,
            output_type=output_type,
            **kwargs,
        )
        control.check()
        return output.images if output_type == "latent" else list(output.images)

    def _hires_plan(self, request: GenerationRequest, resolved: ResolvedSampler) -> _HiresPlan | None:
        from lorapipe.generate.hires import is_latent_upscaler

        options = request.hires
        target = hires_target(request.width, request.height, options)
        if target is None:
            return None  # A1111 turns hires fix off when the target is the first-pass size
        hr_resolved = resolve_sampler(
            options.sampler_name or resolved.sampler.name,
            options.scheduler if options.scheduler is not None else request.scheduler,
        )
        prompt = options.prompt or request.prompt
        negative_prompt = options.negative_prompt or request.negative_prompt
        parsed = parse_extra_networks(prompt)
        loras, warnings = self._resolve_loras(parsed.loras) if request.apply_loras else ((), [])
        steps = options.second_pass_steps or request.steps
        # diffusers runs int(steps * strength) steps; at least one, so a tiny step count still refines.
        steps = max(steps, math.ceil(1 / options.denoising_strength))
        return _HiresPlan(
            options=options,
            target=target,
            resolved=hr_resolved,
            loras=loras,
            prompt=prompt,
            negative_prompt=negative_prompt,
            text=parsed.text,
            negative_text=parse_extra_networks(negative_prompt).text,
            steps=steps,
            steps_run=int(steps * options.denoising_strength),
            latent=is_latent_upscaler(options.upscaler),
            warnings=tuple(warnings),
        )

    def _apply_loras(self, loras: tuple[ActiveLora, ...], warnings: list[str]) -> tuple[ActiveLora, ...]:
        """Merge `loras`; returns those applied and adds a warning for each file left out or partly read."""
        applied = self.loras.apply(loras)
        warnings += [w for w in applied.warnings if w not in warnings]
        return applied.loras

    def _resolve_loras(self, tags) -> tuple[tuple[ActiveLora, ...], list[str]]:
        active, missing, skipped = [], [], []
        for tag in merge_lora_tags(tags):
            try:
                entry = self.registry.resolve(tag.name)
            except GenerationError:
                entry = None  # a path-like name is simply not a key; A1111 reports it as not found
            if entry is None:
                reason = self.registry.skip_reason(tag.name)
                if reason:
                    skipped.append(f"LoRA {tag.name}: not applied: the file was left out of the catalogue ({reason})")
                else:
                    missing.append(tag.name)
                continue
            active.append(
                ActiveLora(entry=entry, mentioned_as=tag.name, te_weight=tag.te_weight, unet_weight=tag.unet_weight)
            )
        warnings = [f"Networks not found: {', '.join(missing)}"] if missing else []
        return tuple(active), warnings + skipped

    def _pipeline_for(self, request: GenerationRequest):
        if request.inpaint:
            if self._inpaint is None:  # a view on the same components, as the img2img pipeline is
                from diffusers import StableDiffusionXLInpaintPipeline

                self._inpaint = StableDiffusionXLInpaintPipeline.from_pipe(self.pipe)
                self._inpaint.set_progress_bar_config(disable=True)
            return self._inpaint
        return self._img2img_pipeline() if request.init_images else self.pipe

    def _img2img_pipeline(self):
        if self._img2img is None:
            from diffusers import StableDiffusionXLImg2ImgPipeline

            self._img2img = StableDiffusionXLImg2ImgPipeline.from_pipe(self.pipe)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    def _scheduler(self, resolved: ResolvedSampler):
        key = (resolved.sampler.name, resolved.effective_schedule.name)
        if key not in self._schedulers:
            self._schedulers[key] = build_scheduler(resolved, self._base_scheduler_config)
        return self._schedulers[key]

    @staticmethod
    def _extra_params(request, resolved, plan: _HiresPlan | None, active) -> dict[str, object]:
        """A1111's extra_generation_params: the mask or hires fields, then `Lora hashes` (kept over the hires
        pass)."""
        extra: dict[str, object] = dict(inpaint_infotext(request.inpaint)) if request.inpaint else {}
        loras = list(active)
        if plan:
            extra.update(
                hires_infotext(
                    plan.options,
                    first_sampler=resolved.sampler.name,
                    hr_sampler=plan.resolved.sampler.name,
                    first_schedule=resolved.schedule_label,
                    hr_schedule=plan.resolved.schedule_label,
                    hr_prompt=plan.prompt if plan.prompt != request.prompt else None,
                    hr_negative_prompt=plan.negative_prompt
                    if plan.negative_prompt != request.negative_prompt
                    else None,
                )
            )
            loras += [lora for lora in plan.loras if lora not in loras]
        extra["Lora hashes"] = lora_hashes_value([(a.mentioned_as, a.entry.short_hash) for a in loras])
        return {key: value for key, value in extra.items() if value is not None}

    def _infotext(self, request, resolved, seed, subseed, plan, extra) -> str:
        params = {
            "Steps": request.steps,
            "Sampler": resolved.sampler.name,
            "Schedule type": resolved.schedule_label,
            "CFG scale": request.cfg_scale,
            "Seed": seed,
            "Size": f"{request.width}x{request.height}",
            "Model hash": self.model.short_hash,
            "Model": self.model.name,
            "Variation seed": subseed if request.subseed_strength > 0 else None,
            "Variation seed strength": request.subseed_strength if request.subseed_strength > 0 else None,
            "Denoising strength": request.denoising_strength if request.init_images else None,
            "RNG": "CPU",  # noise is drawn on the CPU so a seed gives the same image on every device
        }
        return create_infotext(request.prompt, request.negative_prompt, params, extra)


def merge_lora_tags(tags: Sequence[LoraTag]) -> tuple[LoraTag, ...]:
    """One tag per LoRA name, in first-mention order, with the multipliers of repeated tags added (A1111 applies
    each repeat on top of the others, which is the same sum)."""
    merged: dict[str, LoraTag] = {}
    for tag in tags:
        seen = merged.get(tag.name)
        merged[tag.name] = (
            tag
            if seen is None
            else replace(seen, te_weight=seen.te_weight + tag.te_weight, unet_weight=seen.unet_weight + tag.unet_weight)
        )
    return tuple(merged.values())


def check_request(request: GenerationRequest) -> None:
    """Every check a generation request must pass, each a GenerationError naming the field."""
    for field_name in ("cfg_scale", "subseed_strength", "denoising_strength"):
        if not math.isfinite(getattr(request, field_name)):
            raise GenerationError(f"{field_name}: {getattr(request, field_name)} is not a finite number")
    if not 0 <= request.subseed_strength <= 1:
        raise GenerationError("subseed_strength: must be in [0, 1]")
    for field_name in ("seed", "subseed"):
        value = getattr(request, field_name)
        if value is not None and value != -1 and not 0 <= value <= SEED_LIMIT - request.batch_size * request.n_iter:
            raise GenerationError(f"{field_name}: {value} is out of range; use -1 (random) or 0 to 2**64 - 1")
    for text_field in ("prompt", "negative_prompt"):
        names = {tag.name for tag in parse_extra_networks(getattr(request, text_field)).loras}
        if len(names) > MAX_LORAS_PER_REQUEST:
            raise GenerationError(
                f"{text_field}: {len(names)} different LoRAs; at most {MAX_LORAS_PER_REQUEST} per request"
            )
    resolve_sampler(request.sampler_name, request.scheduler)
    for field_name in ("width", "height"):
        value = getattr(request, field_name)
        if value < 8 or value % 8:
            raise GenerationError(f"{field_name}: {value} is not a positive multiple of 8; pick e.g. 1024")
    for field_name in ("steps", "batch_size", "n_iter"):
        if getattr(request, field_name) < 1:
            raise GenerationError(f"{field_name}: must be at least 1")
    if request.init_images and not 0 < request.denoising_strength <= 1:
        raise GenerationError("denoising_strength: must be in (0, 1] for img2img")
    if request.hires is not None:
        if request.init_images:
            raise GenerationError("enable_hr: hires fix is for txt2img only; leave it off with init_images")
        check_hires(request.hires)
        if request.hires.sampler_name:
            resolve_sampler(request.hires.sampler_name, request.hires.scheduler)
        if request.hires.prompt:
            names = {tag.name for tag in parse_extra_networks(request.hires.prompt).loras}
            if len(names) > MAX_LORAS_PER_REQUEST:
                raise GenerationError(f"hr_prompt: {len(names)} different LoRAs; at most {MAX_LORAS_PER_REQUEST}")
    if request.init_images:
        check_resize_mode(request.resize_mode)
    if request.inpaint is not None:
        if not request.init_images:
            raise GenerationError("mask: inpainting needs init_images (the picture to repaint)")
        check_inpaint(request.inpaint)


def _scheduler_steps(request: GenerationRequest) -> int:
    """The schedule length handed to diffusers. img2img runs int(steps x strength) of it, and diffusers fails on
    zero (1 step at strength 0.75), so the schedule is lengthened until one step runs, as the hires pass does."""
    if request.init_images and int(request.steps * request.denoising_strength) < 1:
        return math.ceil(1 / request.denoising_strength)
    return request.steps


def _steps_run(request: GenerationRequest) -> int:
    if request.init_images:
        return max(1, int(request.steps * request.denoising_strength))
    return request.steps


def _fixed_seed(seed: int | None) -> int:
    if seed is None or seed == -1:
        return random.randrange(MAX_SEED)
    return int(seed)
