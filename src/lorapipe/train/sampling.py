"""Preview images during training (sd-scripts sample_images): Kohya `sample_prompts` files (.txt with
`--n --w --h --s --d --l --ss`, .toml, .json) read into SamplePrompt values, then rendered by the training models
with the LoRA active, Kohya's sampler names, files under `output_dir/sample/` named as sd-scripts names them.

torch and diffusers are imported only where images are made: the prompt file is read and checked (by `plan.py`)
before any model loads.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from lorapipe.atomic import atomic_target
from lorapipe.config.keys import SAMPLE_SCHEDULERS
from lorapipe.errors import ConfigError
from lorapipe.sdxl.constants import BETA_END, BETA_SCHEDULE, BETA_START, NUM_TRAIN_TIMESTEPS
from lorapipe.train.naming import sample_image_name

DEFAULT_SIZE = 512  # sd-scripts' default, also for SDXL
DEFAULT_STEPS = 30
DEFAULT_SCALE = 7.5


@dataclass(frozen=True)
class SamplePrompt:
    """One preview image request."""

    prompt: str
    negative_prompt: str = ""
    width: int = DEFAULT_SIZE
    height: int = DEFAULT_SIZE
    steps: int = DEFAULT_STEPS
    scale: float = DEFAULT_SCALE
    seed: int | None = None
    sampler: str | None = None

    def normalised(self) -> SamplePrompt:
        """Sizes floored to multiples of 8 (min 64), steps clamped to 1..1000, as sd-scripts does."""
        return replace(
            self,
            width=max(64, self.width - self.width % 8),
            height=max(64, self.height - self.height % 8),
            steps=min(1000, max(1, self.steps)),
        )


_OPTION_KEYS = {
    "n": "negative_prompt",
    "w": "width",
    "h": "height",
    "s": "steps",
    "d": "seed",
    "l": "scale",
    "ss": "sampler",
}
_DICT_KEYS = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "width": "width",
    "height": "height",
    "sample_steps": "steps",
    "scale": "scale",
    "seed": "seed",
    "sample_sampler": "sampler",
}


def parse_prompt_line(line: str, where: str = "sample_prompts") -> SamplePrompt:
    """`a toy --n blurry --w 1024 --h 1024 --d 1 --s 20 --l 6` -> SamplePrompt (the separator is " --")."""
    pieces = line.split(" --")
    values: dict = {"prompt": pieces[0].strip()}
    for piece in pieces[1:]:
        match = re.match(r"^(ss|n|w|h|s|d|l|g|cn|ctr|rcfg|fs)\s+(.*)$", piece.strip(), flags=re.IGNORECASE)
        if not match:
            continue  # sd-scripts ignores unknown options
        key, raw = match.group(1).lower(), match.group(2).strip()
        if key not in _OPTION_KEYS:
            continue  # other-model options (--g, --cn, ...) do nothing for SDXL
        values[_OPTION_KEYS[key]] = _convert(_OPTION_KEYS[key], raw, where)
    return SamplePrompt(**values).normalised()


def _convert(field: str, raw, where: str):
    try:
        if field in ("width", "height", "steps", "seed"):
            return int(raw)
        if field == "scale":
            return float(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {field} {raw!r} is not a number") from exc
    return str(raw)


def _from_dict(entry: dict, where: str) -> SamplePrompt:
    values = {}
    for key, value in entry.items():
        if key in _DICT_KEYS:
            values[_DICT_KEYS[key]] = _convert(_DICT_KEYS[key], value, where)
    if "prompt" not in values:
        raise ConfigError(f"{where}: an entry has no 'prompt'")
    return SamplePrompt(**values).normalised()


def load_sample_prompts(path: Path) -> list[SamplePrompt]:
    """Read a prompt file; a missing file is a ConfigError naming the sample_prompts key."""
    path = Path(path)
    where = f"sample_prompts ({path})"
    if not path.is_file():
        raise ConfigError(f"{where}: file not found; fix the path or remove sample_prompts")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: not valid TOML ({exc})") from exc
        table = data.get("prompt", {})
        shared = {k: v for k, v in table.items() if k != "subset"}
        prompts = []
        for subset in table.get("subset", []):
            clash = set(shared) & set(subset)
            if clash:  # sd-scripts' keyword expansion raises on duplicates instead of overriding
                raise ConfigError(f"{where}: key(s) {', '.join(sorted(clash))} set both in [prompt] and a subset")
            prompts.append(_from_dict({**shared, **subset}, where))
        return prompts
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not valid JSON ({exc})") from exc
        if not isinstance(data, list):
            raise ConfigError(f"{where}: expected a JSON list of prompts")
        return [parse_prompt_line(e, where) if isinstance(e, str) else _from_dict(e, where) for e in data]
    lines = [ln.strip() for ln in text.splitlines()]
    return [parse_prompt_line(ln, where) for ln in lines if ln and not ln.startswith("#")]


# ---- making the images --------------------------------------------------------------------------------------------


def make_sample_scheduler(name: str | None, *, v_parameterization: bool = False):
    """A diffusers scheduler for a Kohya sampler name; unknown names fall back to DDIM as in sd-scripts."""
    import diffusers

    class_name, extra = SAMPLE_SCHEDULERS.get((name or "ddim").lower(), SAMPLE_SCHEDULERS["ddim"])
    cls = getattr(diffusers, class_name)
    config = dict(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule=BETA_SCHEDULE,
        prediction_type="v_prediction" if v_parameterization else "epsilon",
        **extra,
    )
    if class_name in ("DDIMScheduler", "DDPMScheduler"):
        config["clip_sample"] = False
    if class_name in ("DDIMScheduler", "PNDMScheduler"):
        config["steps_offset"] = 1
    if class_name == "PNDMScheduler":
        config["skip_prk_steps"] = True
    return cls(**config)


def write_sample_images(
    models,
    prompts: list[SamplePrompt],
    out_dir: Path,
    *,
    output_name: str | None,
    epoch: int | None,
    step: int,
    default_sampler: str | None,
    v_parameterization: bool,
    fallback_seed: int,
    device,
) -> list[Path]:
    """Generate one PNG per prompt with the current weights; returns the written paths.

    `models` is anything with unet, vae, text_encoder(_2), tokenizer(_2). Global RNG state is saved and restored
    so previews never change the training's random stream.
    """
    import torch
    from diffusers import StableDiffusionXLPipeline

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    written = []
    lora_modes = {m: m.training for m in models.unet.modules()}
    models.unet.eval()
    # The VAE and text encoders may have been moved off the GPU after caching; bring them back for the previews.
    parked = {
        name: next(getattr(models, name).parameters()).device for name in ("vae", "text_encoder", "text_encoder_2")
    }
    for name in parked:
        getattr(models, name).to(device)
    try:
        for index, prompt in enumerate(prompts):
            scheduler = make_sample_scheduler(prompt.sampler or default_sampler, v_parameterization=v_parameterization)
            pipe = StableDiffusionXLPipeline(
                vae=models.vae,
                text_encoder=models.text_encoder,
                text_encoder_2=models.text_encoder_2,
                tokenizer=models.tokenizer,
                tokenizer_2=models.tokenizer_2,
                unet=models.unet,
                scheduler=scheduler,
            )
            pipe.set_progress_bar_config(disable=True)
            seed = prompt.seed if prompt.seed is not None else fallback_seed + index
            generator = torch.Generator(device="cpu").manual_seed(seed)
            with torch.no_grad():
                latents = pipe(
                    prompt.prompt,
                    negative_prompt=prompt.negative_prompt or None,
                    width=prompt.width,
                    height=prompt.height,
                    num_inference_steps=prompt.steps,
                    guidance_scale=prompt.scale,
                    generator=generator,
                    original_size=(prompt.height, prompt.width),
                    target_size=(prompt.height, prompt.width),
                    output_type="latent",
                ).images
                image = _decode(pipe, latents)
            name = sample_image_name(output_name, epoch=epoch, step=step, prompt_index=index, seed=prompt.seed)
            path = out_dir / name
            with atomic_target(path, suffix=".png") as tmp:  # PIL picks the format from the suffix
                image.save(tmp)
            written.append(path)
    finally:
        for name, where in parked.items():
            getattr(models, name).to(where)
        for module, mode in lora_modes.items():
            module.training = mode
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
    return written


def _decode(pipe, latents):
    """Decode in the VAE's own dtype: with no_half_vae the VAE stays fp32 while the UNet's latents are bf16/fp16,
    which diffusers' SDXL pipeline only reconciles for an fp16 VAE."""
    vae = pipe.vae
    pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(pixels, output_type="pil")[0]
