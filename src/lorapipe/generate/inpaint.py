"""A1111 inpainting with a normal (4-channel) SDXL checkpoint: the mask, what the masked area starts from, and
the original pixels pasted back. PIL-level work only; torch stays inside the functions that run the pipeline.

A1111 (modules/processing.py, StableDiffusionProcessingImg2Img) does, and so does this module:
1. The mask becomes one channel (the alpha of a mask with transparency), thresholded at 128 when `mask_round`,
   inverted on request (`inpainting_mask_invert`), then Gaussian-blurred by `mask_blur_x`/`mask_blur_y`.
2. "Whole picture": image and mask are scaled to width x height. "Only masked" (`inpaint_full_res`): both are
   cropped to the mask's box plus `inpaint_full_res_padding`, grown to the output's aspect, scaled to width x height.
3. Masked content: "original" starts from the picture; "fill" from blurred surrounding colours; "latent noise" /
   "latent nothing" replace the masked latents with the seed's noise / zeros.
4. diffusers' SDXL inpaint pipeline denoises, blending the known latents back after every step.
5. The original pixels are composited back outside the mask (whole picture: the blurred mask doubled, as A1111's
   `mask_for_overlay`; only masked: the crop is scaled back into the full-size init image).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lorapipe.errors import GenerationError

# A1111's `inpainting_fill` values 0..3, by index; the labels are what its infotext writes as `Masked content`.
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
BLANK_MASK_WARNING = "mask: nothing to repaint (the mask is all black); the init image is returned unchanged"


@dataclass(frozen=True)
class InpaintOptions:
    """A1111's img2img mask group; defaults are A1111's UI defaults. White = repaint, black = keep."""

    mask: object  # PIL image
    blur_x: int = 4
    blur_y: int = 4
    mask_round: bool = True  # threshold the mask at 128 and the latent-blend mask at 0.5
    masked_content: str = "original"  # one of MASKED_CONTENT
    invert: bool = False  # repaint the black part instead
    only_masked: bool = False  # A1111 `inpaint_full_res`
    only_masked_padding: int = 32  # pixels around the mask's box ("Only masked padding")


@dataclass(frozen=True)
class InpaintRegion:
    """One init image made ready for the pipeline, and what the result is pasted back onto."""

    image: object  # width x height: what denoising starts from
    mask: object  # width x height, blurred: the pipeline's latent-blend mask
    original: object  # the picture the result is pasted onto (its size is the output size)
    overlay_mask: object  # same size as `original`: where the result shows through
    crop: tuple[int, int, int, int] | None  # (x1, y1, x2, y2) in `original` when only masked


def check_inpaint(options: InpaintOptions) -> None:
    """GenerationError naming the A1111 field for options that cannot be honoured."""
    if options.masked_content not in MASKED_CONTENT:
        raise GenerationError(f"inpainting_fill: {options.masked_content!r} is not one of {', '.join(MASKED_CONTENT)}")
    if options.blur_x < 0 or options.blur_y < 0:
        raise GenerationError("mask_blur: must be 0 or more pixels")
    if options.only_masked_padding < 0:
        raise GenerationError("inpaint_full_res_padding: must be 0 or more pixels")
    if not hasattr(options.mask, "size") or not hasattr(options.mask, "convert"):
        raise GenerationError("mask: must be a PIL image")


def prepare_mask(options: InpaintOptions):
    """The mask as A1111 prepares it, at its own size: one channel, rounded, inverted, blurred ("L" image)."""
    from PIL import ImageFilter, ImageOps

    mask = options.mask
    if mask.mode in ("RGBA", "LA") and mask.getextrema()[-1] != (255, 255):
        mask = mask.getchannel("A")  # a mask drawn on transparency: the alpha says where to paint
    else:
        mask = mask.convert("L")
    if options.mask_round:
        mask = mask.point(lambda value: 255 if value > 128 else 0)
    if options.invert:
        mask = ImageOps.invert(mask)
    if options.blur_x > 0 or options.blur_y > 0:
        mask = mask.filter(ImageFilter.GaussianBlur((options.blur_x, options.blur_y)))
    return mask


def is_blank(mask) -> bool:
    """True when a prepared mask asks to repaint nothing."""
    return mask.getbbox() is None


def prepare_region(options: InpaintOptions, mask, image, width: int, height: int, processor) -> InpaintRegion:
    """Scale (or crop, when only masked) one init image and the prepared mask to the generation size.
    `processor` is the pipeline's VaeImageProcessor (its crop-region and fill-resize helpers)."""
    from PIL import Image

    image = image.convert("RGB")
    if mask.size != image.size:  # A1111 scales a mask of another size to the picture's
        mask = mask.resize(image.size, Image.Resampling.BILINEAR)
    if options.only_masked and not is_blank(mask):
        crop = processor.get_crop_region(mask, width, height, pad=options.only_masked_padding)
        work_image = processor.resize(image.crop(crop), height, width, resize_mode="fill")
        work_mask = processor.resize(mask.crop(crop), height, width, resize_mode="fill")
        region = InpaintRegion(work_image, work_mask, original=image, overlay_mask=mask, crop=crop)
    else:
        if image.size != (width, height):
            image = image.resize((width, height))
            mask = mask.resize((width, height), Image.Resampling.BILINEAR)
        # Doubled, as A1111 does: the inner half of the feather is all generated, the outer half blends.
        overlay = mask.point(lambda value: min(255, value * 2))
        region = InpaintRegion(image, mask, original=image, overlay_mask=overlay, crop=None)
    if options.masked_content == "fill":
        region = InpaintRegion(
            fill_masked(region.image, region.mask), region.mask, region.original, region.overlay_mask, region.crop
        )
    return region


def fill_masked(image, mask):
    """A1111's "fill": cover the masked area with colours spread in from the kept pixels, so denoising starts
    from the surroundings rather than from what was there.

    Blurring a premultiplied-alpha image and un-premultiplying averages only the kept pixels; layering ever
    sharper blurs keeps far-reaching colour where nothing is near and local colour close to the mask's edge.
    """
    from PIL import Image, ImageFilter, ImageOps

    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    filled = Image.new("RGBA", image.size)
    for radius, layers in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        spread = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(layers):
            filled.alpha_composite(spread)
    return filled.convert("RGB")


def paste_back(region: InpaintRegion, result, processor):
    """The original pixels outside the mask over the generated picture (diffusers' apply_overlay, A1111's)."""
    return processor.apply_overlay(region.overlay_mask, region.original, result, region.crop)


def inpaint_infotext(options: InpaintOptions) -> dict[str, object]:
    """The extra_generation_params A1111 adds for a mask, in its insertion order (None = left out)."""
    params: dict[str, object] = {}
    if options.invert:
        params["Mask mode"] = "Inpaint not masked"
    if options.blur_x > 0 or options.blur_y > 0:
        # A1111's `mask_blur` reads None when the two directions differ, and None is not written.
        params["Mask blur"] = options.blur_x if options.blur_x == options.blur_y else None
    if options.only_masked:
        params["Inpaint area"] = "Only masked"
        params["Masked area padding"] = options.only_masked_padding
    if options.masked_content != "original":
        params["Masked content"] = options.masked_content
    return params


def inpaint_batch(
    pipe, options: InpaintOptions, mask, init_images, *, width: int, height: int, seeds, denoise: Callable[..., list]
) -> list:
    """Inpaint one batch with diffusers' SDXL inpaint pipeline `pipe`; `denoise(**pipeline_kwargs)` runs it
    (prompts, sampler, steps, strength and progress are the caller's). Returns the pasted-back PIL images."""
    from diffusers.image_processor import VaeImageProcessor

    from lorapipe.generate.latents import masked_start_latents

    processor = pipe.image_processor
    regions = [prepare_region(options, mask, image, width, height, processor) for image in init_images]
    # diffusers binarises the latent-blend mask at 0.5, which is A1111's mask_round; without it the blend is soft.
    pipe.mask_processor = VaeImageProcessor(
        vae_scale_factor=pipe.vae_scale_factor,
        do_normalize=False,
        do_binarize=options.mask_round,
        do_convert_grayscale=True,
    )
    masks = [region.mask for region in regions]
    start = [region.image for region in regions]
    if options.masked_content in ("latent noise", "latent nothing"):
        start = masked_start_latents(pipe, start, masks, seeds, noise=options.masked_content == "latent noise")
    results = denoise(image=start, mask_image=masks, width=width, height=height)
    return [paste_back(region, result, processor) for region, result in zip(regions, results)]
