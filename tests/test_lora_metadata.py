"""`ss_*` / `modelspec.*` metadata as sd-scripts writes it for an SDXL LoRA."""

from __future__ import annotations

import datetime
import hashlib
import json

from lorapipe.hashes import HashCache
from lorapipe.lora.metadata import (
    MINIMUM_SS_KEYS,
    DatasetSummary,
    base_model_file_hashes,
    build_kohya_metadata,
)

CONFIG = {
    "learning_rate": 0.0004,
    "unet_lr": 0.0001,
    "text_encoder_lr": [0.00005],
    "lr_scheduler": "constant",
    "mixed_precision": "bf16",
    "network_dropout": 0.1,
    "noise_offset": 0.0357,
    "seed": 42,
    "resolution": "1024,768",
    "max_train_epochs": 3,
    "optimizer_type": "Adafactor",
    "optimizer_args": ["scale_parameter=False", "relative_step=False"],
    "output_name": "dwjz_toy",
    "min_timestep": 0,
    "max_timestep": 1000,
    "metadata_author": "tester",
    "metadata_trigger_phrase": "dwjz toy",
}
SUMMARY = {
    "num_train_images": 40,
    "num_batches_per_epoch": 40,
    "resolution": (1024, 768),
    "enable_bucket": True,
    "dataset_dirs": {"20_dwjz toy": {"n_repeats": 20, "img_count": 2}},
    "tag_frequency": {"20_dwjz toy": {"dwjz toy": 2, "red": 1}},
}
STARTED = 1_700_000_000.5
FINISHED = 1_700_000_600.25


def build(**overrides):
    kwargs = dict(
        config_dict=CONFIG,
        dataset_summary=SUMMARY,
        base_model_name="stabilityai/stable-diffusion-xl-base-1.0",
        training_started_at=STARTED,
        training_finished_at=FINISHED,
        steps=120,
        epoch=3,
        network_dim=16,
        network_alpha=8.0,
        network_args={"conv_dim": 4, "conv_alpha": 1},
        session_id=1234,
        max_train_steps=120,
    )
    kwargs.update(overrides)
    return build_kohya_metadata(**kwargs)


def test_every_value_is_a_string_and_core_keys_follow_sd_scripts():
    meta = build()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == "16" and meta["ss_network_alpha"] == "8.0"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "1"}
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["ss_sd_model_name"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert meta["ss_v2"] == "False"
    assert meta["ss_learning_rate"] == "0.0004" and meta["ss_unet_lr"] == "0.0001"
    assert meta["ss_text_encoder_lr"] == "5e-05"
    assert meta["ss_mixed_precision"] == "bf16" and meta["ss_seed"] == "42"
    assert meta["ss_network_dropout"] == "0.1" and meta["ss_noise_offset"] == "0.0357"
    assert meta["ss_steps"] == "120" and meta["ss_epoch"] == "3" and meta["ss_num_epochs"] == "3"
    assert meta["ss_max_train_steps"] == "120"
    assert meta["ss_num_train_images"] == "40" and meta["ss_num_batches_per_epoch"] == "40"
    assert meta["ss_session_id"] == "1234"
    assert meta["ss_training_started_at"] == str(STARTED) and meta["ss_training_finished_at"] == str(FINISHED)
    assert meta["ss_output_name"] == "dwjz_toy"
    assert meta["ss_optimizer"] == "Adafactor(scale_parameter=False,relative_step=False)"
    assert meta["ss_min_snr_gamma"] == "None"  # unset options are written as "None", as sd-scripts does


def test_folder_mode_dataset_keys():
    meta = build()
    assert json.loads(meta["ss_tag_frequency"]) == SUMMARY["tag_frequency"]
    assert json.loads(meta["ss_dataset_dirs"]) == SUMMARY["dataset_dirs"]
    assert meta["ss_resolution"] == "(1024, 768)"
    assert meta["ss_enable_bucket"] == "True"
    assert "ss_datasets" not in meta


def test_dataset_config_mode_writes_ss_datasets_instead():
    datasets = ({"is_dreambooth": True, "num_train_images": 40, "subsets": [{"img_count": 2, "num_repeats": 20}]},)
    meta = build(dataset_summary=DatasetSummary(num_train_images=40, num_batches_per_epoch=40, datasets=datasets))
    assert json.loads(meta["ss_datasets"])[0]["subsets"][0]["num_repeats"] == 20
    assert "ss_enable_bucket" not in meta and "ss_resolution" not in meta


def test_modelspec_keys():
    meta = build()
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert meta["modelspec.sai_model_spec"].startswith("1.0.")
    assert meta["modelspec.title"] == "dwjz_toy"
    assert meta["modelspec.resolution"] == "1024x768"
    assert meta["modelspec.prediction_type"] == "epsilon"
    assert meta["modelspec.timestep_range"] == "0,1000"
    assert meta["modelspec.author"] == "tester" and meta["modelspec.trigger_phrase"] == "dwjz toy"
    assert datetime.datetime.fromisoformat(meta["modelspec.date"]) == datetime.datetime.fromtimestamp(int(FINISHED))
    v_pred = build(config_dict={"v_parameterization": True, "metadata_title": "Mine"})
    assert v_pred["modelspec.prediction_type"] == "v" and v_pred["modelspec.title"] == "Mine"
    assert v_pred["modelspec.resolution"] == "1024x1024"  # SDXL default when no resolution is given


def test_no_metadata_keeps_only_the_minimum():
    meta = build(no_metadata=True)
    assert {k for k in meta if k.startswith("ss_")} <= set(MINIMUM_SS_KEYS)
    assert meta["ss_network_dim"] == "16" and "modelspec.architecture" in meta
    assert "ss_tag_frequency" not in meta


def test_base_model_hashes_are_a1111_legacy_and_full_sha256(tmp_path):
    blob = bytes(range(256)) * (0x120000 // 256)
    path = tmp_path / "base.safetensors"
    path.write_bytes(blob)
    legacy, full = base_model_file_hashes(path, HashCache(tmp_path / "cache"))
    assert legacy == hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]
    assert full == hashlib.sha256(blob).hexdigest()
    meta = build(base_model_name=str(path), base_model_hashes=(legacy, full))
    assert meta["ss_sd_model_name"] == "base.safetensors"
    assert (meta["ss_sd_model_hash"], meta["ss_new_sd_model_hash"]) == (legacy, full)


def test_session_ids_differ_between_runs_when_not_given():
    assert build(session_id=None)["ss_session_id"] != build(session_id=None)["ss_session_id"]
