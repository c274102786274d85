"""Kohya's cross-option rules, checked when the config loads (before any model)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from config_fixtures import minimal_config, write_config

from lorapipe.config import ConfigProblems, load_train_config
from lorapipe.errors import ConfigError


@pytest.fixture()
def dataset_copy(sample_dataset_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "0001-dataset"
    shutil.copytree(sample_dataset_dir, target)
    return target


def _load(folder: Path, **keys: object):
    return load_train_config(folder, config_path=write_config(folder, minimal_config(**keys)))


@pytest.mark.parametrize(
    ("keys", "fragment"),
    [
        (
            {"cache_text_encoder_outputs": True, "network_train_unet_only": True, "shuffle_caption": True},
            "cache_text_encoder_outputs cannot be used with shuffle_caption",
        ),
        (
            {"cache_text_encoder_outputs": True, "network_train_unet_only": True, "caption_dropout_rate": 0.1},
            "caption_dropout_rate",
        ),
        (
            {"cache_text_encoder_outputs": True, "network_train_unet_only": True, "caption_tag_dropout_rate": 0.2},
            "caption_tag_dropout_rate",
        ),
        (
            {"cache_text_encoder_outputs": True, "network_train_unet_only": True, "caption_dropout_every_n_epochs": 2},
            "caption_dropout_every_n_epochs",
        ),
        ({"cache_text_encoder_outputs": True}, "set network_train_unet_only = true"),
        ({"cache_text_encoder_outputs_to_disk": True}, "set network_train_unet_only = true"),
        ({"cache_latents": True, "color_aug": True}, "cache_latents cannot be used with color_aug"),
        ({"cache_latents_to_disk": True, "random_crop": True}, "cache_latents cannot be used with random_crop"),
        ({"save_every_n_epochs": 1, "save_every_n_steps": 100}, "save_every_n_epochs and save_every_n_steps"),
        ({"network_train_unet_only": True, "network_train_text_encoder_only": True}, "nothing would train"),
        ({"full_bf16": True, "mixed_precision": "fp16"}, "full_bf16 needs mixed_precision"),
        ({"full_fp16": True}, "full_fp16 needs mixed_precision"),
        ({"scale_v_pred_loss_like_noise_pred": True}, "only with v_parameterization"),
        ({"adaptive_noise_scale": 0.01}, "adaptive_noise_scale needs noise_offset"),
        ({"min_timestep": 500, "max_timestep": 400}, "min_timestep 500 must be below max_timestep 400"),
        ({"max_timestep": 1001}, "max_timestep = 1001"),
        ({"lr_warmup_steps": 10}, "constant_with_warmup"),
        ({"lr_scheduler": "adafactor", "optimizer_type": "AdamW"}, "works only with optimizer_type"),
    ],
)
def test_incompatible_options_are_refused(dataset_copy: Path, keys: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(dataset_copy, **keys)
    assert fragment in str(info.value)


def test_compatible_combinations_pass(dataset_copy: Path) -> None:
    config = _load(
        dataset_copy,
        cache_text_encoder_outputs_to_disk=True,
        network_train_unet_only=True,
        cache_latents_to_disk=True,
        flip_aug=True,
        full_bf16=True,
        mixed_precision="bf16",
        lr_scheduler="constant_with_warmup",
        lr_warmup_steps=0.1,
        noise_offset=0.05,
        adaptive_noise_scale=0.01,
        multires_noise_iterations=6,
        v_parameterization=True,
        scale_v_pred_loss_like_noise_pred=True,
        loss_type="huber",
        huber_schedule="exponential",
    ).config
    # *_to_disk implies the in-memory flag, as in sd-scripts.
    assert config.cache_text_encoder_outputs and config.cache_latents
    assert config.lr_warmup_steps == 0.1 and isinstance(config.lr_warmup_steps, float)
    assert not config.train_text_encoder and config.train_unet


def test_optimizer_names_are_case_insensitive(dataset_copy: Path) -> None:
    for written, canonical in (
        ("adamw8bit", "AdamW8bit"),
        ("PRODIGY", "Prodigy"),
        ("dadaptadam", "DAdaptAdam"),
        ("lion", "Lion"),
        ("", "AdamW"),
        ("torch.optim.SGD", "torch.optim.SGD"),
    ):
        assert _load(dataset_copy, optimizer_type=written).config.optimizer_type == canonical


def test_adafactor_scheduler_with_adafactor_optimizer(dataset_copy: Path) -> None:
    config = _load(dataset_copy, optimizer_type="Adafactor", lr_scheduler="adafactor:1e-3").config
    assert config.lr_scheduler == "adafactor:1e-3"


def test_advice_warnings(dataset_copy: Path) -> None:
    loaded = _load(dataset_copy, clip_skip=2, mixed_precision="fp16", sample_every_n_steps=10)
    text = "\n".join(loaded.warnings)
    assert "clip_skip = 2 has no effect on SDXL training" in text
    assert "no_half_vae" in text
    assert "sample_prompts is not" in text


def test_all_cross_option_errors_listed_at_once(dataset_copy: Path) -> None:
    with pytest.raises(ConfigProblems) as info:
        _load(
            dataset_copy, save_every_n_epochs=1, save_every_n_steps=5, full_fp16=True, min_timestep=999, max_timestep=10
        )
    assert len(info.value.errors) >= 3
