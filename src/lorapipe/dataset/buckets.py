"""Aspect-ratio buckets and SDXL size conditioning with sd-scripts' arithmetic.

Mirrors `model_util.make_bucket_resolutions`, `BucketManager.select_bucket` / `get_crop_ltrb` and
`trim_and_resize_if_required`. Sizes are (width, height) unless a name ends in `_hw`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from lorapipe.dataset.blueprint import DatasetBlueprint

_PIL_FILTERS = {
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "linear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "cubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,  # OpenCV's INTER_AREA is box averaging when shrinking
    "box": Image.Resampling.BOX,
}


@dataclass(frozen=True)
class BucketChoice:
    bucket: tuple[int, int]  # (w, h) of the training tensor
    resized: tuple[int, int]  # (w, h) the image is resized to before the centre/random trim
    aspect_error: float  # bucket ratio minus image ratio, as logged by sd-scripts


def make_bucket_resolutions(
    max_reso: tuple[int, int], min_size: int, max_size: int, divisible: int
) -> list[tuple[int, int]]:
    """sd-scripts' predefined bucket list: the square plus every (w, h) of area <= max_reso's, sorted."""
    max_area = max_reso[0] * max_reso[1]
    side = int(math.sqrt(max_area) // divisible) * divisible
    resos = {(side, side)}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


class BucketPlanner:
    """Chooses the bucket of each image for one blueprint (immutable after construction)."""

    def __init__(self, blueprint: DatasetBlueprint):
        self._steps = blueprint.bucket_reso_steps
        self._max_area = blueprint.resolution[0] * blueprint.resolution[1]
        self._no_upscale = blueprint.enable_bucket and blueprint.bucket_no_upscale
        if not blueprint.enable_bucket:
            self._predefined: tuple[tuple[int, int], ...] = (blueprint.resolution,)
        elif self._no_upscale:
            self._predefined = ()
        else:
            self._predefined = tuple(
                make_bucket_resolutions(
                    blueprint.resolution, blueprint.min_bucket_reso, blueprint.max_bucket_reso, self._steps
                )
            )
        self._ratios = np.array([w / h for w, h in self._predefined]) if self._predefined else np.array([])

    @property
    def predefined(self) -> tuple[tuple[int, int], ...]:
        return self._predefined

    def _round_to_steps(self, x: float) -> int:
        value = int(x + 0.5)
        return value - value % self._steps

    def select(self, width: int, height: int) -> BucketChoice:
        """The bucket and resize target for an image of (width, height); a bucket side may be 0 (too small)."""
        aspect = width / height
        if not self._no_upscale:
            reso = (width, height)
            if reso not in self._predefined:
                reso = self._predefined[int(np.abs(self._ratios - aspect).argmin())]
            scale = reso[1] / height if aspect > reso[0] / reso[1] else reso[0] / width
            resized = (int(width * scale + 0.5), int(height * scale + 0.5))
        else:
            if width * height > self._max_area:
                resized_w = math.sqrt(self._max_area * aspect)
                resized_h = self._max_area / resized_w
                w_rounded = self._round_to_steps(resized_w)
                h_in_w = self._round_to_steps(w_rounded / aspect)
                h_rounded = self._round_to_steps(resized_h)
                w_in_h = self._round_to_steps(h_rounded * aspect)
                ar_w = w_rounded / h_in_w if h_in_w else math.inf
                ar_h = w_in_h / h_rounded if h_rounded else math.inf
                if abs(ar_w - aspect) < abs(ar_h - aspect):
                    resized = (w_rounded, int(w_rounded / aspect + 0.5))
                else:
                    resized = (int(h_rounded * aspect + 0.5), h_rounded)
            else:
                resized = (width, height)
            reso = (resized[0] - resized[0] % self._steps, resized[1] - resized[1] % self._steps)
        error = (reso[0] / reso[1] - aspect) if reso[1] else math.inf
        return BucketChoice(reso, resized, error)


def crop_ltrb(bucket: tuple[int, int], image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """sd-scripts' `get_crop_ltrb`: offsets of the image *fitted inside* the bucket (not the pixels trimmed)."""
    bucket_ar = bucket[0] / bucket[1]
    image_ar = image_size[0] / image_size[1]
    if bucket_ar > image_ar:
        fitted_w, fitted_h = bucket[1] * image_ar, float(bucket[1])
    else:
        fitted_w, fitted_h = float(bucket[0]), bucket[0] / image_ar
    left = (bucket[0] - fitted_w) // 2
    top = (bucket[1] - fitted_h) // 2
    return left, top, left + fitted_w, top + fitted_h


def _resize(image: Image.Image, size: tuple[int, int], interpolation: str | None) -> Image.Image:
    if interpolation is None:
        # sd-scripts' default: area when shrinking, lanczos when enlarging.
        shrinking = size[0] * size[1] < image.width * image.height
        interpolation = "area" if shrinking else "lanczos"
    return image.resize(size, _PIL_FILTERS[interpolation])


def trim_and_resize(
    image: Image.Image,
    choice: BucketChoice,
    *,
    random_crop: bool,
    rng: random.Random,
    interpolation: str | None = None,
) -> np.ndarray:
    """Resize to `choice.resized`, then trim the long axis to the bucket (centred, or random with random_crop)."""
    if image.size != choice.resized:
        image = _resize(image, choice.resized, interpolation)
    pixels = np.asarray(image, dtype=np.uint8)
    bucket_w, bucket_h = choice.bucket
    height, width = pixels.shape[:2]
    if width > bucket_w:
        trim = width - bucket_w
        start = rng.randint(0, trim) if random_crop else trim // 2
        pixels = pixels[:, start : start + bucket_w]
    if height > bucket_h:
        trim = height - bucket_h
        start = rng.randint(0, trim) if random_crop else trim // 2
        pixels = pixels[start : start + bucket_h]
    if pixels.shape[:2] != (bucket_h, bucket_w):
        # Only reachable when the resize came out a pixel short; pad by edge repetition rather than fail.
        pad_h, pad_w = max(0, bucket_h - pixels.shape[0]), max(0, bucket_w - pixels.shape[1])
        pixels = np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")[:bucket_h, :bucket_w]
    return np.ascontiguousarray(pixels)
