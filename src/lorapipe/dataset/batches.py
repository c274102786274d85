"""Epoch order and per-sample pixels/captions/size conditioning, as sd-scripts' dataset produces them.

`epoch_batches` expands repeats, groups by bucket, and shuffles bucket chunks and in-bucket order with
`seed + epoch` (sd-scripts' `shuffle_buckets`). `load_sample` decodes, resizes and trims one image to its bucket
and returns SDXL's micro-conditioning exactly as sd-scripts passes it. numpy/PIL only.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from lorapipe.dataset.blueprint import DatasetBlueprint
from lorapipe.dataset.buckets import BucketChoice, crop_ltrb, trim_and_resize
from lorapipe.dataset.captions import process_caption
from lorapipe.dataset.images import decode_image, decode_image_with_alpha
from lorapipe.dataset.scan import DatasetScan, ImageItem


@dataclass(frozen=True, eq=False)
class Sample:
    """One training example. Sizes are (h, w) and the crop (top, left), the order SDXL's add_time_ids use."""

    pixels: np.ndarray = field(repr=False)  # uint8, H x W x 3, exactly the bucket size
    caption: str
    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]
    target_size: tuple[int, int]
    loss_weight: float
    path: Path
    flipped: bool = False
    alpha_mask: np.ndarray | None = field(default=None, repr=False)  # uint8 H x W (subset alpha_mask, image has alpha)


def epoch_batches(scan: DatasetScan, blueprint: DatasetBlueprint, epoch: int, seed: int) -> list[list[ImageItem]]:
    """All batches of `epoch` (1-based) in training order; a batch never mixes buckets or datasets, and is cut at
    its dataset's batch size (sd-scripts' DatasetGroup: every dataset's batches, shuffled together)."""
    buckets: dict[tuple[int, tuple[int, int]], list[ImageItem]] = defaultdict(list)
    for item in scan.items:
        buckets[(item.subset.dataset_index, item.bucket)].extend([item] * item.repeats)
    keys = sorted(buckets)
    ordered = [buckets[key] for key in keys]
    sizes = [blueprint.batch_size_of(index) for index, _ in keys]
    chunks = [(b, n) for b, members in enumerate(ordered) for n in range(math.ceil(len(members) / sizes[b]))]
    rng = random.Random(seed + epoch)
    rng.shuffle(chunks)
    for members in ordered:
        rng.shuffle(members)
    return [ordered[b][n * sizes[b] : (n + 1) * sizes[b]] for b, n in chunks]


def _color_aug(image: Image.Image, rng: random.Random) -> Image.Image:
    """Weak hue jitter like sd-scripts' color_aug (a random hue rotation of up to +-18 degrees)."""
    shift = rng.uniform(-0.05, 0.05)
    hsv = np.asarray(image.convert("HSV"), dtype=np.int16)
    hsv[..., 0] = (hsv[..., 0] + int(round(shift * 255))) % 256
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")


def load_sample(
    item: ImageItem,
    blueprint: DatasetBlueprint,
    epoch: int,
    rng: random.Random,
    *,
    step: int | None = None,
    total_steps: int | None = None,
) -> Sample:
    """Decode `item` and produce its pixels, caption and SDXL size conditioning for `epoch` (`step` and
    `total_steps`: for token warm-up)."""
    subset = item.subset
    image, alpha = decode_image_with_alpha(item.path) if subset.alpha_mask else (decode_image(item.path), None)
    if subset.color_aug:
        image = _color_aug(image, rng)
    choice = BucketChoice(item.bucket, item.resized_size, 0.0)
    crop_state = rng.getstate()  # the mask is cut exactly as the pixels (same random crop)
    pixels = trim_and_resize(
        image, choice, random_crop=subset.random_crop, rng=rng, interpolation=subset.resize_interpolation
    )
    mask = None
    if alpha is not None:
        mask_rng = random.Random()
        mask_rng.setstate(crop_state)
        mask = trim_and_resize(
            alpha.convert("RGB"),
            choice,
            random_crop=subset.random_crop,
            rng=mask_rng,
            interpolation=subset.resize_interpolation,
        )[..., 0]
    left, top, right, _ = crop_ltrb(item.bucket, image.size)
    flipped = subset.flip_aug and rng.random() < 0.5
    if flipped:
        pixels = np.ascontiguousarray(pixels[:, ::-1])
        mask = None if mask is None else np.ascontiguousarray(mask[:, ::-1])
        left = item.bucket[0] - right  # sd-scripts mirrors the crop offset with the image
    caption = process_caption(item.caption, subset, epoch, rng, step=step, total_steps=total_steps)
    return Sample(
        pixels=pixels,
        caption=caption,
        original_size=(image.height, image.width),
        crop_top_left=(int(top), int(left)),
        target_size=(item.bucket[1], item.bucket[0]),
        loss_weight=blueprint.prior_loss_weight if subset.is_reg else 1.0,
        path=item.path,
        flipped=flipped,
        alpha_mask=mask,
    )
