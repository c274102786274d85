"""A small, deterministic Kohya-layout dataset of one distinctive subject, drawn with PIL and numpy.

`write_sample_dataset(out_root)` writes::

    out_root/0001-dataset/kohya-sdxl-config.toml   (annotated Kohya config, tiny-model settings)
    out_root/0001-dataset/sample-prompts.txt       (preview prompts for sample images during training)
    out_root/0001-dataset/20_dwjz toy/NN-<pose>.png (12 images, 64-160 px, varied aspect ratios)
    out_root/0001-dataset/20_dwjz toy/NN-<pose>.txt ("dwjz toy, ..." captions)

The subject is "dwjz toy": a teal robot with orange diagonal stripes, a round magenta head with one big yellow eye
and two antennae with red tips. Every pose, background and size comes from a seeded generator, so the same call
gives byte-identical files on every machine (PNG encoding of identical pixels is deterministic).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lorapipe.errors import DatasetError
from lorapipe.file_names import DATASET_CONFIG_NAME

DATASET_NAME = "0001-dataset"
SUBSET_FOLDER = "20_dwjz toy"
PROMPTS_NAME = "sample-prompts.txt"
# Preview prompts for sample images during training (Kohya's prompt-file syntax).
SAMPLE_PROMPTS = (
    "# preview prompts: <prompt> --n <negative> --w <width> --h <height> --s <steps> --d <seed> --l <cfg scale>\n"
    "dwjz toy standing on a beach --n blurry --w 64 --h 64 --s 8 --d 1 --l 5\n"
    "dwjz toy, waving, studio lighting --w 96 --h 64 --s 8 --d 2 --l 5\n"
)
TRIGGER = "dwjz toy"
_SEED = 20240611

# (width, height) of the 12 images: squares, landscapes and portraits, all >= the config's min_bucket_reso (32).
_SIZES = (
    (96, 96),
    (128, 96),
    (96, 128),
    (160, 96),
    (96, 160),
    (128, 128),
    (80, 80),
    (144, 112),
    (112, 144),
    (160, 160),
    (64, 96),
    (112, 64),
)
_BACKGROUNDS = ("sky gradient", "checkered floor", "green meadow", "plain grey wall", "sunset gradient", "polka dots")
_TOY_BODY = (32, 178, 170)
_TOY_STRIPE = (255, 140, 0)
_TOY_HEAD = (214, 40, 160)
_TOY_EYE = (255, 230, 40)
_TOY_TIP = (230, 30, 30)


@dataclass(frozen=True)
class _Pose:
    size: tuple[int, int]
    background: str
    angle: float  # degrees, positive = counter-clockwise
    scale: float  # toy height as a fraction of the image height
    center: tuple[float, float]  # fractions of width, height
    arms_up: bool
    mirrored: bool


def _poses() -> list[_Pose]:
    rng = np.random.default_rng(_SEED)
    poses = []
    for index, size in enumerate(_SIZES):
        poses.append(
            _Pose(
                size=size,
                background=_BACKGROUNDS[index % len(_BACKGROUNDS)],
                angle=float(rng.uniform(-35, 35)),
                scale=float(rng.uniform(0.55, 0.85)),
                center=(float(rng.uniform(0.35, 0.65)), float(rng.uniform(0.45, 0.6))),
                arms_up=bool(index % 3 == 0),
                mirrored=bool(index % 2 == 1),
            )
        )
    return poses


def _background(name: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    w, h = size
    ys = np.linspace(0.0, 1.0, h)[:, None, None]
    if name == "sky gradient":
        pixels = (1 - ys) * np.array([110, 170, 250]) + ys * np.array([220, 235, 255])
        pixels = np.broadcast_to(pixels, (h, w, 3))
    elif name == "sunset gradient":
        pixels = (1 - ys) * np.array([250, 120, 60]) + ys * np.array([90, 40, 120])
        pixels = np.broadcast_to(pixels, (h, w, 3))
    elif name == "checkered floor":
        yy, xx = np.mgrid[0:h, 0:w]
        cell = max(8, min(w, h) // 6)
        checks = ((yy // cell + xx // cell) % 2)[..., None]
        pixels = checks * np.array([235, 235, 225]) + (1 - checks) * np.array([60, 60, 70])
    elif name == "green meadow":
        pixels = np.broadcast_to(np.array([70, 150, 60]), (h, w, 3)) + rng.normal(0, 18, (h, w, 3))
        pixels[: h // 3] = np.array([150, 200, 245])
    elif name == "polka dots":
        pixels = np.broadcast_to(np.array([245, 225, 200]), (h, w, 3)).copy()
        yy, xx = np.mgrid[0:h, 0:w]
        for _ in range(10):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, 9)
            pixels[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = np.array([120, 90, 200])
    else:  # plain grey wall, with a little noise so it is not flat
        pixels = np.broadcast_to(np.array([150, 150, 155]), (h, w, 3)) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _toy_sprite(height: int, arms_up: bool) -> Image.Image:
    """Draw the toy on a transparent square canvas so it can be rotated and pasted."""
    s = max(24, height)
    sprite = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(sprite)
    u = s / 20.0  # drawing unit
    # Body with diagonal stripes.
    body = (6 * u, 9 * u, 14 * u, 17 * u)
    d.rectangle(body, fill=_TOY_BODY + (255,))
    for k in range(-2, 4):
        x0 = body[0] + k * 3 * u
        d.line([(x0, body[3]), (x0 + 8 * u, body[1])], fill=_TOY_STRIPE + (255,), width=max(1, int(u)))
    d.rectangle(body, outline=(20, 20, 20, 255), width=max(1, int(u / 2)))
    # Re-mask the stripes that spilled outside the body.
    mask = Image.new("L", (s, s), 0)
    ImageDraw.Draw(mask).rectangle(body, fill=255)
    stripes_only = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    stripes_only.paste(sprite, (0, 0), mask)
    sprite = stripes_only
    d = ImageDraw.Draw(sprite)
    d.rectangle(body, outline=(20, 20, 20, 255), width=max(1, int(u / 2)))
    # Legs and arms.
    d.rectangle((7 * u, 17 * u, 9 * u, 19.5 * u), fill=(40, 40, 40, 255))
    d.rectangle((11 * u, 17 * u, 13 * u, 19.5 * u), fill=(40, 40, 40, 255))
    arm_y = 6 * u if arms_up else 15 * u
    d.line([(6 * u, 11 * u), (3 * u, arm_y)], fill=_TOY_BODY + (255,), width=max(1, int(1.2 * u)))
    d.line([(14 * u, 11 * u), (17 * u, arm_y)], fill=_TOY_BODY + (255,), width=max(1, int(1.2 * u)))
    # Head, eye, antennae.
    d.ellipse((6.5 * u, 3 * u, 13.5 * u, 9.5 * u), fill=_TOY_HEAD + (255,), outline=(20, 20, 20, 255))
    d.ellipse((8.3 * u, 4.6 * u, 11.7 * u, 8 * u), fill=_TOY_EYE + (255,))
    d.ellipse((9.4 * u, 5.7 * u, 10.6 * u, 6.9 * u), fill=(10, 10, 10, 255))
    for x_base, x_tip in ((8 * u, 6.5 * u), (12 * u, 13.5 * u)):
        d.line([(x_base, 3.6 * u), (x_tip, 0.9 * u)], fill=(30, 30, 30, 255), width=max(1, int(u / 2)))
        d.ellipse((x_tip - 0.9 * u, 0.1 * u, x_tip + 0.9 * u, 1.8 * u), fill=_TOY_TIP + (255,))
    return sprite


def _caption(pose: _Pose) -> str:
    w, h = pose.size
    framing = "square photo" if w == h else ("wide shot" if w > h else "tall shot")
    lean = "standing upright" if abs(pose.angle) < 10 else ("leaning left" if pose.angle > 0 else "leaning right")
    arms = "arms raised" if pose.arms_up else "arms down"
    return f"{TRIGGER}, teal robot toy with orange stripes, {lean}, {arms}, {pose.background} background, {framing}"


def _render(pose: _Pose, rng: np.random.Generator) -> Image.Image:
    w, h = pose.size
    image = _background(pose.background, pose.size, rng)
    sprite = _toy_sprite(int(round(h * pose.scale)), pose.arms_up)
    if pose.mirrored:
        sprite = sprite.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    sprite = sprite.rotate(pose.angle, resample=Image.Resampling.BICUBIC, expand=True)
    x = int(round(pose.center[0] * w - sprite.width / 2))
    y = int(round(pose.center[1] * h - sprite.height / 2))
    image.paste(sprite, (x, y), sprite)
    return image


def _image_name(index: int, pose: _Pose) -> str:
    slug = pose.background.replace(" ", "-")
    tilt = "tilt" if abs(pose.angle) >= 10 else "upright"
    return f"{index + 1:02d}-{slug}-{tilt}"


def write_sample_dataset(out_root: Path, *, overwrite: bool = False) -> Path:
    """Write the sample dataset under `out_root` and return `out_root/"0001-dataset"`.

    The dataset is built in a temporary sibling folder and renamed into place, so a crash never leaves half a
    dataset behind. An existing `0001-dataset` is refused unless `overwrite` is set.
    """
    out_root = Path(out_root)
    target = out_root / DATASET_NAME
    if target.exists() and not overwrite:
        raise DatasetError(f"{target}: already exists; choose another folder or pass --force to replace it")
    out_root.mkdir(parents=True, exist_ok=True)
    staging = out_root / f".{DATASET_NAME}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    subset_dir = staging / SUBSET_FOLDER
    subset_dir.mkdir(parents=True)
    template_file = resources.files("lorapipe.dataset").joinpath("templates", DATASET_CONFIG_NAME)
    template = template_file.read_text(encoding="utf-8")
    (staging / DATASET_CONFIG_NAME).write_text(template, encoding="utf-8")
    (staging / PROMPTS_NAME).write_text(SAMPLE_PROMPTS, encoding="utf-8")
    rng = np.random.default_rng(_SEED + 1)
    for index, pose in enumerate(_poses()):
        name = _image_name(index, pose)
        _render(pose, rng).save(subset_dir / f"{name}.png", format="PNG", optimize=False)
        (subset_dir / f"{name}.txt").write_text(_caption(pose) + "\n", encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return target
