"""alpha_mask / masked_loss: the images' alpha channel weights the loss (transparent pixels are not learned)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from lorapipe.config import load_train_config
from lorapipe.dataset.batches import load_sample
from lorapipe.dataset.scan import scan_dataset
from lorapipe.errors import ConfigError
from lorapipe.train.loss import LossOptions, training_loss
from lorapipe.train.run import run_training
from tests.train_fixtures import SUBSET, copy_dataset, one_thread  # noqa: F401 (autouse fixture)


def _cut_out(path, *, seed: int) -> None:
    """Make `path` an RGBA cut-out: red subject where alpha is 255, a random transparent background."""
    rng = np.random.default_rng(seed)
    with Image.open(path) as image:
        w, h = image.size
    alpha = np.zeros((h, w), np.uint8)
    alpha[:, w // 3 :] = 255
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = rng.integers(0, 256, (h, w, 3))  # what hides under transparency must not matter
    rgba[alpha == 255, :3] = (200, 0, 0)
    rgba[..., 3] = alpha
    Image.fromarray(rgba, "RGBA").save(path)


def test_the_mask_is_cropped_resized_and_flipped_with_the_pixels(sample_dataset_dir, tmp_path):
    dataset = copy_dataset(sample_dataset_dir, tmp_path, keep=2)
    for n, image in enumerate(sorted((dataset / SUBSET).glob("*.png"))):
        _cut_out(image, seed=n)
    cfg = load_train_config(
        dataset,
        overrides=("alpha_mask=true", "random_crop=true", "flip_aug=true", "cache_latents=false"),
        output_dir=tmp_path / "o",
        base_model="unused",
    ).config
    scan = scan_dataset(cfg.dataset)
    flips = set()
    for seed in range(8):
        for item in scan.items:
            sample = load_sample(item, cfg.dataset, 1, random.Random(seed))
            assert sample.alpha_mask is not None and sample.alpha_mask.shape == sample.pixels.shape[:2]
            green = sample.pixels[..., 1].astype(int)  # 0 on the red subject, 255 where composited on white
            assert np.abs(green - (255 - sample.alpha_mask.astype(int))).mean() < 8
            flips.add(sample.flipped)
    assert flips == {True, False}


def test_masked_out_error_does_not_count():
    pred = torch.zeros(1, 4, 8, 8)
    target = torch.zeros(1, 4, 8, 8)
    target[..., :4] = 1.0  # error only in the left half
    mask = torch.ones(1, 1, 64, 64)
    mask[..., :32] = 0.0  # ... which the alpha channel marks as background
    args = (torch.tensor([500]), torch.ones(1), LossOptions(), torch.ones(1000), torch.ones(1000))
    assert training_loss(pred, target, *args).item() == pytest.approx(0.5)
    assert training_loss(pred, target, *args, mask=mask).item() == 0.0


def test_training_with_alpha_masks(tiny_model_dir, sample_dataset_dir, tmp_path):
    dataset = copy_dataset(sample_dataset_dir, tmp_path, keep=3)
    for n, image in enumerate(sorted((dataset / SUBSET).glob("*.png"))):
        _cut_out(image, seed=n)
    common = ("max_train_steps=2", "seed=2", 'sample_prompts=""', "sample_every_n_steps=0")
    masked = run_training(
        dataset,
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "m",
        overrides=(*common, "alpha_mask=true", "masked_loss=true"),
        show_progress=False,
        step_lines=False,
    )
    plain = run_training(
        dataset,
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "p",
        overrides=common,
        show_progress=False,
        step_lines=False,
    )
    assert masked.lora_path.is_file()
    # Two thirds of each image count with the mask, all of it without: the losses must differ.
    assert all(abs(a - b) > 1e-6 for a, b in zip(masked.losses, plain.losses))


def test_masked_loss_needs_alpha_mask(tiny_model_dir, sample_dataset_dir, tmp_path):
    with pytest.raises(ConfigError, match="masked_loss.*alpha_mask"):
        run_training(
            sample_dataset_dir,
            base_model=str(tiny_model_dir),
            output_dir=tmp_path / "o",
            overrides=("masked_loss=true",),
            show_progress=False,
        )


def test_conditioning_mask_images_are_refused_by_name(sample_dataset_dir, tmp_path):
    toml = tmp_path / "dataset.toml"
    toml.write_text(
        f"""[general]\nresolution = 64\n[[datasets]]\n[[datasets.subsets]]\n"""
        f"""image_dir = "{sample_dataset_dir / SUBSET}"\nconditioning_data_dir = "{tmp_path}"\n"""
    )
    with pytest.raises(ConfigError, match="conditioning_data_dir"):
        load_train_config(
            sample_dataset_dir, overrides=(f"dataset_config={toml}",), output_dir=tmp_path / "o", base_model="unused"
        )
