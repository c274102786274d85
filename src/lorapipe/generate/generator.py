"""The Generator: one SDXL pipeline, its fused LoRA set, and A1111 semantics for prompts, seeds and samplers.

One caller at a time (the server's worker, or the CLI): a lock makes concurrent calls wait rather than corrupt
the fused set or the shared scheduler.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lorapipe.errors import GenerationError
from lorapipe.generate.control import JobControl
from lorapipe.generate.infotext import create_infotext, lora_hashes_value
from lorapipe.generate.lora_set import ActiveLora, FusedLoraSet
from lorapipe.generate.model_info import ModelInfo, describe_model
from lorapipe.generate.prompt_syntax import parse_extra_networks
from lorapipe.generate.samplers import ResolvedSampler, build_scheduler, resolve_sampler
from lorapipe.registry import LoraRegistry

MAX_SEED = 4294967294  # A1111 draws random seeds from [0, 4294967294)


@dataclass(frozen=True)
class GenerationRequest:
    """A txt2img (or, with `init_images`, img2img) request in A1111's terms."""

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
    denoising_strength: float = 0.75
    apply_loras: bool = True  # False = A1111 `disable_extra_networks`: tags are removed but not applied


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


class Generator:
    """Owns one SDXL pipeline; `generate()` turns a GenerationRequest into images with A1111 infotexts."""

    def __init__(self, pipe, *, model: ModelInfo, registry: LoraRegistry | None = None):
        self.pipe = pipe
        self.model = model
        self.registry = registry or LoraRegistry(None)
        self.loras = FusedLoraSet(pipe, verify=self.registry.verify_for_loading)
        self._lock = threading.Lock()
        self._schedulers: dict[tuple[str, str], object] = {}
        self._base_scheduler_config = dict(pipe.scheduler.config)
        self._img2img = None

    @classmethod
    def load(cls, base_model: str, *, lora_dir: str | Path | None = None, device: str | None = None,
             dtype: str | None = None, hash_model: bool = True) -> Generator:
        """Load `base_model` (diffusers folder, single file or hub id) onto `device` (default: cuda if present)."""
        import torch

        from lorapipe.sdxl.load import load_sdxl_pipeline

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or ("fp16" if device.startswith("cuda") else "fp32")
        registry = LoraRegistry(lora_dir) if lora_dir else None
        pipe = load_sdxl_pipeline(str(base_model), dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
        return cls(pipe, model=describe_model(str(base_model), hash_weights=hash_model), registry=registry)

    @property
    def device(self):
        return self.pipe.unet.device

    def generate(self, request: GenerationRequest, control: JobControl | None = None) -> GenerationResult:
        """Run a request; raises GenerationError for bad input and GenerationCancelled when cancelled."""
        _check_request(request)
        control = control or JobControl()
        with self._lock:
            return self._generate(request, control)

    # -- internals ----------------------------------------------------------------------------------------
    def _generate(self, request: GenerationRequest, control: JobControl) -> GenerationResult:
        import torch

        resolved = resolve_sampler(request.sampler_name, request.scheduler)
        parsed = parse_extra_networks(request.prompt)
        negative_text = parse_extra_networks(request.negative_prompt).text
        active, warnings = self._resolve_loras(parsed.loras) if request.apply_loras else ((), [])
        control.begin(request.n_iter)
        self.loras.apply(active)
        pipe = self._pipeline_for(request)
        pipe.scheduler = self._scheduler(resolved)

        total = request.batch_size * request.n_iter
        seed = _fixed_seed(request.seed)
        subseed = _fixed_seed(request.subseed)
        seeds = [seed + (i if request.subseed_strength == 0 else 0) for i in range(total)]
        subseeds = [subseed + i for i in range(total)]

        from lorapipe.generate.encode import encode_pair

        positive, negative = encode_pair(parsed.text, negative_text, self.pipe)
        images = []
        job_timestamp = time.strftime("%Y%m%d%H%M%S")
        for iteration in range(request.n_iter):
            if control.interrupted:
                break
            batch = slice(iteration * request.batch_size, (iteration + 1) * request.batch_size)
            steps_run = _steps_run(request)
            control.begin_batch(iteration, steps_run)
            images += self._run_batch(pipe, request, positive, negative, seeds[batch], subseeds[batch], control)
        infotexts = tuple(
            self._infotext(request, resolved, active, seeds[i], subseeds[i]) for i in range(len(images))
        )
        for image, text in zip(images, infotexts):
            image.info["parameters"] = text
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand back activations so memory stays flat across many requests
        return GenerationResult(
            images=tuple(images), infotexts=infotexts, seeds=tuple(seeds), subseeds=tuple(subseeds),
            request=request, sampler_name=resolved.sampler.name, schedule_label=resolved.schedule_label,
            loras=tuple(active), warnings=tuple(warnings), interrupted=control.interrupted,
            job_timestamp=job_timestamp, model=self.model,
        )

    def _run_batch(self, pipe, request, positive, negative, seeds, subseeds, control) -> list:
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        size = len(seeds)
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        embed_dtype = self.pipe.unet.dtype
        kwargs = {}
        if request.init_images:
            kwargs["image"] = [_resized(request.init_images[i % len(request.init_images)], request)
                               for i in range(size)]
            kwargs["strength"] = request.denoising_strength
        else:
            shape = (size, self.pipe.unet.config.in_channels,
                     request.height // self.pipe.vae_scale_factor, request.width // self.pipe.vae_scale_factor)
            latents = randn_tensor(shape, generator=generators, device=self.device, dtype=embed_dtype)
            if request.subseed_strength > 0:
                sub_generators = [torch.Generator("cpu").manual_seed(s) for s in subseeds]
                sub = randn_tensor(shape, generator=sub_generators, device=self.device, dtype=embed_dtype)
                latents = _slerp(request.subseed_strength, latents, sub)
            kwargs["latents"] = latents
            kwargs["width"], kwargs["height"] = request.width, request.height

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
            num_inference_steps=request.steps,
            guidance_scale=request.cfg_scale,
            generator=generators,
            callback_on_step_end=on_step_end,
            output_type="pil",
            **kwargs,
        )
        control.check()
        return list(output.images)

    def _resolve_loras(self, tags) -> tuple[tuple[ActiveLora, ...], list[str]]:
        active, missing = [], []
        for tag in tags:
            try:
                entry = self.registry.resolve(tag.name)
            except GenerationError:
                entry = None  # a path-like name is simply not a key; A1111 reports it as not found
            if entry is None:
                missing.append(tag.name)
                continue
            active.append(ActiveLora(entry=entry, mentioned_as=tag.name, te_weight=tag.te_weight,
                                     unet_weight=tag.unet_weight))
        warnings = [f"Networks not found: {', '.join(missing)}"] if missing else []
        return tuple(active), warnings

    def _pipeline_for(self, request: GenerationRequest):
        if not request.init_images:
            return self.pipe
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

    def _infotext(self, request, resolved, active, seed, subseed) -> str:
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
        hashes = lora_hashes_value([(a.mentioned_as, a.entry.short_hash) for a in active])
        return create_infotext(request.prompt, request.negative_prompt, params, {"Lora hashes": hashes})


def _check_request(request: GenerationRequest) -> None:
    for field_name in ("width", "height"):
        value = getattr(request, field_name)
        if value < 8 or value % 8:
            raise GenerationError(f"{field_name}: {value} is not a positive multiple of 8; pick e.g. 1024")
    for field_name in ("steps", "batch_size", "n_iter"):
        if getattr(request, field_name) < 1:
            raise GenerationError(f"{field_name}: must be at least 1")
    if request.init_images and not 0 < request.denoising_strength <= 1:
        raise GenerationError("denoising_strength: must be in (0, 1] for img2img")


def _steps_run(request: GenerationRequest) -> int:
    if request.init_images:
        return max(1, int(request.steps * request.denoising_strength))
    return request.steps


def _fixed_seed(seed: int | None) -> int:
    if seed is None or seed == -1:
        return random.randrange(MAX_SEED)
    return int(seed)


def _resized(image, request: GenerationRequest):
    image = image.convert("RGB")
    if image.size != (request.width, request.height):
        image = image.resize((request.width, request.height))
    return image


def _slerp(t: float, low, high):
    """Spherical interpolation of two noise tensors, per sample (A1111's variation seed)."""
    import torch

    low_flat, high_flat = low.flatten(1), high.flatten(1)
    low_n = low_flat / low_flat.norm(dim=1, keepdim=True)
    high_n = high_flat / high_flat.norm(dim=1, keepdim=True)
    dot = (low_n * high_n).sum(1).clamp(-1, 1)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    near = dot.abs() > 0.9995
    w_low = torch.where(near, 1 - t, torch.sin((1 - t) * omega) / so).unsqueeze(1)
    w_high = torch.where(near, torch.tensor(t, dtype=low.dtype, device=low.device),
                         torch.sin(t * omega) / so).unsqueeze(1)
    return (w_low * low_flat + w_high * high_flat).reshape(low.shape)
