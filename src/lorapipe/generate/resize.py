"""A1111's img2img `resize_mode`: how an init image of another size is brought to width x height.

0 "Just resize" stretches, 1 "Crop and resize" covers the size and centre-crops, 2 "Resize and fill" fits inside
and fills the sides from the image's own edges; diffusers' VaeImageProcessor.resize does each ("default",
"crop", "fill"). 3 "Just resize (latent upscale)" is refused by name rather than silently treated as 0.
"""

from __future__ import annotations

from lorapipe.errors import GenerationError

RESIZE_MODES = {0: "default", 1: "crop", 2: "fill"}


def check_resize_mode(mode: int) -> None:
    if mode not in RESIZE_MODES:
        raise GenerationError(
            f"resize_mode: {mode} is not supported; use 0 (just resize), 1 (crop and resize) or 2 (resize and fill)"
        )


def fit(image, width: int, height: int, mode: int, processor):
    """`image` (PIL) at width x height the way `mode` says; unchanged when it already has that size."""
    if image.size == (width, height):
        return image
    return processor.resize(image, height, width, resize_mode=RESIZE_MODES[mode])
