"""A1111's hires fix: the target size, the upscalers, and the infotext fields (tables torch-free).

A1111 (modules/processing.py, StableDiffusionProcessingTxt2Img) samples at width x height, upscales either the
latents (the "Latent ..." modes, torch interpolate) or the decoded image (an image upscaler), then runs an img2img
pass at the target size with `denoising_strength`. Image upscalers here are the ones that need no extra model:
"None" and "Lanczos" (PIL Lanczos, as A1111's final resize does) and "Nearest".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from lorapipe.errors import GenerationError

LATENT_FACTOR = 8  # SDXL's VAE: latents are 1/8 of the pixels (A1111's opt_f)
DEFAULT_LATENT_MODE = "Latent"  # A1111's `latent_upscale_default_mode`, used when hr_upscaler is not given

# name -> (torch interpolate mode, antialias), as A1111's shared.latent_upscale_modes.
LATENT_UPSCALE_MODES: Mapping[str, tuple[str, bool]] = MappingProxyType(
    {
        "Latent": ("bilinear", False),
        "Latent (antialiased)": ("bilinear", True),
        "Latent (bicubic)": ("bicubic", False),
        "Latent (bicubic antialiased)": ("bicubic", True),
        "Latent (nearest)": ("nearest", False),
        "Latent (nearest-exact)": ("nearest-exact", False),
    }
)
# name -> PIL resampling filter name; the order is A1111's /sdapi/v1/upscalers order for these three.
IMAGE_UPSCALERS: Mapping[str, str] = MappingProxyType({"None": "LANCZOS", "Lanczos": "LANCZOS", "Nearest": "NEAREST"})


HIRES_DENOISING_STRENGTH = 0.7  # A1111's default for the hires pass


@dataclass(frozen=True)
class HiresFix:
    """A1111's `enable_hr` options. `scale` applies when both resize sides are 0; a 0 side keeps the aspect."""

    scale: float = 2.0
    resize_x: int = 0
    resize_y: int = 0
    upscaler: str | None = None  # None: the default latent mode ("Latent"), and no `Hires upscaler` infotext
    second_pass_steps: int = 0  # 0: the first pass's steps
    denoising_strength: float = HIRES_DENOISING_STRENGTH
    sampler_name: str | None = None  # None: the first pass's sampler
    scheduler: str | None = None  # None: the first pass's schedule
    prompt: str = ""  # "": the first pass's prompt
    negative_prompt: str = ""


@dataclass(frozen=True)
class HiresTarget:
    """Where the second pass goes: the upscaled size, then the centre crop to the requested resize."""

    upscale_width: int
    upscale_height: int
    width: int
    height: int


def check_hires(hires: HiresFix) -> None:
    """GenerationError naming the field for options A1111 would refuse."""
    if (
        hires.upscaler is not None
        and hires.upscaler not in LATENT_UPSCALE_MODES
        and hires.upscaler not in IMAGE_UPSCALERS
    ):
        known = ", ".join([*LATENT_UPSCALE_MODES, *IMAGE_UPSCALERS])
        raise GenerationError(f"hr_upscaler: could not find upscaler named {hires.upscaler}; use one of: {known}")
    if not 0 < hires.denoising_strength <= 1:
        raise GenerationError("denoising_strength: must be in (0, 1] for hires fix")
    if hires.second_pass_steps < 0:
        raise GenerationError("hr_second_pass_steps: must be 0 (same as steps) or more")
    if hires.resize_x < 0 or hires.resize_y < 0:
        raise GenerationError("hr_resize_x/hr_resize_y: must be 0 (use hr_scale) or a size in pixels")
    if hires.resize_x == hires.resize_y == 0 and hires.scale <= 0:
        raise GenerationError("hr_scale: must be above 0")


def hires_target(width: int, height: int, hires: HiresFix) -> HiresTarget | None:
    """A1111's calculate_target_resolution, floored to whole latents; None when it is the first-pass size
    (A1111 then turns hires fix off)."""
    if hires.resize_x == 0 and hires.resize_y == 0:
        up_w, up_h = int(width * hires.scale), int(height * hires.scale)
        final_w, final_h = up_w, up_h
    elif hires.resize_y == 0:
        up_w, up_h = hires.resize_x, hires.resize_x * height // width
        final_w, final_h = up_w, up_h
    elif hires.resize_x == 0:
        up_w, up_h = hires.resize_y * width // height, hires.resize_y
        final_w, final_h = up_w, up_h
    else:  # both sides given: cover the box keeping the aspect, then crop the overhang (A1111 truncate_x/y)
        if width / height < hires.resize_x / hires.resize_y:
            up_w, up_h = hires.resize_x, hires.resize_x * height // width
        else:
            up_w, up_h = hires.resize_y * width // height, hires.resize_y
        final_w, final_h = hires.resize_x, hires.resize_y
    if (up_w, up_h) == (width, height):
        return None
    up_w, up_h, final_w, final_h = (_whole_latents(v) for v in (up_w, up_h, final_w, final_h))
    if min(final_w, final_h) < LATENT_FACTOR:
        raise GenerationError(f"hr_scale/hr_resize: target {final_w}x{final_h} is too small; upscale, not down")
    return HiresTarget(up_w, up_h, final_w, final_h)


def hires_infotext(
    hires: HiresFix,
    *,
    first_sampler: str,
    hr_sampler: str,
    first_schedule: str,
    hr_schedule: str,
    hr_prompt: str | None,
    hr_negative_prompt: str | None,
) -> dict[str, object]:
    """The extra_generation_params A1111 adds for hires fix, in its insertion order (None = left out).
    `hr_prompt`/`hr_negative_prompt` are None when they equal the first pass's."""
    params: dict[str, object] = {"Denoising strength": hires.denoising_strength}
    if hr_sampler != first_sampler:
        params["Hires sampler"] = hr_sampler
    params["Hires prompt"] = hr_prompt
    params["Hires negative prompt"] = hr_negative_prompt
    params["Hires schedule type"] = hr_schedule if hr_schedule != first_schedule else None
    if hires.resize_x == 0 and hires.resize_y == 0:
        params["Hires upscale"] = hires.scale
    else:
        params["Hires resize"] = f"{hires.resize_x}x{hires.resize_y}"
    params["Hires steps"] = hires.second_pass_steps or None
    params["Hires upscaler"] = hires.upscaler
    return params


def upscale_latents(latents, target: HiresTarget, upscaler: str | None):
    """Resize (N, C, h, w) latents to the target with the named latent mode, then crop to the final size."""
    import torch

    mode, antialias = LATENT_UPSCALE_MODES[upscaler or DEFAULT_LATENT_MODE]
    size = (target.upscale_height // LATENT_FACTOR, target.upscale_width // LATENT_FACTOR)
    resized = torch.nn.functional.interpolate(latents, size=size, mode=mode, antialias=antialias)
    return _centre_crop(resized, target.height // LATENT_FACTOR, target.width // LATENT_FACTOR)


def upscale_image(image, target: HiresTarget, upscaler: str):
    """Resize a PIL image with the named image upscaler, then crop to the final size."""
    from PIL import Image

    resized = image.resize(
        (target.upscale_width, target.upscale_height), getattr(Image.Resampling, IMAGE_UPSCALERS[upscaler])
    )
    left = (target.upscale_width - target.width) // 2
    top = (target.upscale_height - target.height) // 2
    return resized.crop((left, top, left + target.width, top + target.height))


def is_latent_upscaler(upscaler: str | None) -> bool:
    return upscaler is None or upscaler in LATENT_UPSCALE_MODES


def upscaler_listing() -> list[dict]:
    """`/sdapi/v1/upscalers` entries (A1111 UpscalerData shape; its model-free upscalers report scale 4)."""
    return [
        {"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
        for name in IMAGE_UPSCALERS
    ]


def latent_mode_listing() -> list[dict]:
    """`/sdapi/v1/latent-upscale-modes` entries."""
    return [{"name": name} for name in LATENT_UPSCALE_MODES]


def _whole_latents(pixels: int) -> int:
    return pixels // LATENT_FACTOR * LATENT_FACTOR


def _centre_crop(latents, height: int, width: int):
    top = (latents.shape[-2] - height) // 2
    left = (latents.shape[-1] - width) // 2
    return latents[..., top : top + height, left : left + width]
