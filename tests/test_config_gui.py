"""kohya_ss GUI configs run unchanged: our own files in the shape of the GUI's SDXL presets (every form field, `""`
for unset, fields of other LoRA types), as TOML and as the GUI's saved JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from config_fixtures import toml_literal

from lorapipe.config.load import ConfigProblems, load_train_config

# The fields every GUI save holds, whatever the LoRA type (values as the GUI writes them, "" = not set).
GUI_FORM = {
    "LoRA_type": "Standard",
    "LyCORIS_preset": "full",
    "adaptive_noise_scale": 0,
    "additional_parameters": "",
    "block_alphas": "",
    "block_dims": "",
    "block_lr_zero_threshold": "",
    "bucket_no_upscale": True,
    "bucket_reso_steps": 32,
    "cache_latents": True,
    "caption_dropout_every_n_epochs": 0.0,
    "caption_dropout_rate": 0,
    "caption_extension": ".txt",
    "clip_skip": "1",
    "color_aug": False,
    "conv_alpha": 1,
    "conv_alphas": "",
    "conv_dim": 1,
    "conv_dims": "",
    "decompose_both": False,
    "dim_from_weights": False,
    "down_lr_weight": "",
    "enable_bucket": True,
    "epoch": 10,
    "factor": -1,
    "flip_aug": False,
    "full_fp16": False,
    "gradient_accumulation_steps": "1",
    "gradient_checkpointing": True,
    "keep_tokens": "0",
    "learning_rate": 3e-05,
    "log_with": "",
    "lora_network_weights": "",
    "lr_scheduler": "constant",
    "lr_scheduler_num_cycles": "",
    "lr_scheduler_power": "",
    "lr_warmup": 0,
    "max_bucket_reso": 128,
    "max_data_loader_n_workers": "0",
    "max_resolution": "64,64",
    "max_timestep": 1000,
    "max_token_length": "75",
    "max_train_epochs": "",
    "max_train_steps": "",
    "mem_eff_attn": False,
    "mid_lr_weight": "",
    "min_bucket_reso": 32,
    "min_snr_gamma": 5,
    "min_timestep": 0,
    "mixed_precision": "fp16",
    "module_dropout": 0,
    "multires_noise_discount": 0,
    "multires_noise_iterations": 0,
    "network_alpha": 16,
    "network_dim": 32,
    "network_dropout": 0,
    "no_token_padding": False,
    "noise_offset": 0,
    "noise_offset_type": "Original",
    "num_cpu_threads_per_process": 2,
    "optimizer": "AdamW",
    "optimizer_args": "",
    "persistent_data_loader_workers": False,
    "pretrained_model_name_or_path": "stabilityai/stable-diffusion-xl-base-1.0",
    "prior_loss_weight": 1.0,
    "random_crop": False,
    "rank_dropout": 0,
    "save_every_n_epochs": 1,
    "save_precision": "fp16",
    "scale_weight_norms": 0,
    "sdxl": True,
    "sdxl_cache_text_encoder_outputs": False,
    "sdxl_no_half_vae": True,
    "seed": "",
    "shuffle_caption": False,
    "stop_text_encoder_training_pct": 0,
    "text_encoder_lr": 3e-05,
    "train_batch_size": 1,
    "train_on_input": True,
    "training_comment": "",
    "unet_lr": 3e-05,
    "unit": 1,
    "up_lr_weight": "",
    "use_cp": False,
    "v2": False,
    "v_parameterization": False,
    "vae_batch_size": 0,
    "weighted_captions": False,
    "xformers": "xformers",
}
LOHA = {
    "LoRA_type": "LyCORIS/LoHa",
    "network_dim": 8,
    "network_alpha": 4,
    "conv_dim": 4,
    "conv_alpha": 1,
    "optimizer": "Prodigy",
    "learning_rate": 1.0,
    "unet_lr": 1.0,
    "text_encoder_lr": 1.0,
    "use_tucker": False,
    "dora_wd": False,
    "rank_dropout": 0.1,
}
LOKR = {
    "LoRA_type": "LyCORIS/LoKr",
    "network_dim": 64,
    "network_alpha": 64,
    "conv_dim": 64,
    "conv_alpha": 64,
    "factor": 6,
    "use_cp": True,
    "decompose_both": False,
    "optimizer": "AdamW",
    "learning_rate": 1e-4,
    "unet_lr": 1e-4,
    "text_encoder_lr": 1e-4,
    "log_with": "wandb",
}


@pytest.fixture
def dataset_copy(sample_dataset_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "0001-dataset"
    shutil.copytree(sample_dataset_dir, target)
    return target


def _gui_toml(folder: Path, **changes: object) -> Path:
    path = folder / "gui-config.toml"
    values = {**GUI_FORM, **changes}
    path.write_text("".join(f"{k} = {toml_literal(v)}\n" for k, v in values.items() if v is not None))
    return path


def test_standard_gui_config_keeps_rank_optimizer_and_learning_rate(dataset_copy: Path) -> None:
    loaded = load_train_config(dataset_copy, config_path=_gui_toml(dataset_copy))
    config = loaded.config
    assert (config.network_module, config.network_dim, config.network_alpha) == ("networks.lora", 32, 16.0)
    assert (config.optimizer_type, config.learning_rate, config.unet_lr) == ("AdamW", 3e-05, 3e-05)
    # "" is the GUI's "not set": the sd-scripts defaults apply, as when the GUI starts sd-scripts.
    assert config.seed is None and config.lr_scheduler_power == 1.0 and config.log_with is None
    assert config.max_train_epochs == 10  # epoch, since max_train_steps is not set
    assert config.network_args == () and config.conv_dim is None
    text = "\n".join(loaded.warnings)
    # One warning names every GUI field the Standard type does not use (the LyCORIS ones, conv for LoCon only).
    (ignored,) = [w for w in loaded.warnings if "the kohya_ss GUI does not use them for LoRA_type 'Standard'" in w]
    for name in ("LyCORIS_preset", "factor", "use_cp", "conv_dim", "unit", "train_on_input"):
        assert name in ignored
    assert "read as max_train_epochs = 10" in text


def test_lycoris_loha_gui_config_becomes_lycoris_network_args(dataset_copy: Path) -> None:
    config = load_train_config(dataset_copy, config_path=_gui_toml(dataset_copy, **LOHA)).config
    assert config.network_module == "lycoris.kohya"
    assert (config.network_dim, config.optimizer_type, config.learning_rate) == (8, "Prodigy", 1.0)
    assert config.network_args[0] == "algo=loha" and "preset=full" in config.network_args
    options = config.lycoris
    assert (options.algo, options.conv_dim, options.conv_alpha, options.rank_dropout) == ("loha", 4, 1.0, 0.1)
    assert not options.use_tucker and not options.dora_wd


def test_lycoris_lokr_json_as_the_gui_saves_it(dataset_copy: Path) -> None:
    path = dataset_copy / "gui-config.json"
    path.write_text(json.dumps({**GUI_FORM, **LOKR, "sample_prompts": None}, indent=2))
    loaded = load_train_config(dataset_copy, config_path=path)
    config = loaded.config
    assert (config.network_dim, config.optimizer_type, config.learning_rate) == (64, "AdamW", 1e-4)
    assert (config.lycoris.algo, config.lycoris.factor, config.lycoris.use_tucker) == ("lokr", 6, True)
    assert any("LoRA_type = 'LyCORIS/LoKr'" in w and "factor=6" in w for w in loaded.warnings)
    # wandb: used when installed, otherwise a warning (never an error).
    try:
        import wandb  # noqa: F401
    except ImportError:
        assert config.log_with is None and any("wandb package is not installed" in w for w in loaded.warnings)
    else:
        assert config.log_with == "wandb"


def test_renamed_block_fields_and_lr_warmup(dataset_copy: Path) -> None:
    blocks = ",".join(["2"] * 23)
    path = _gui_toml(
        dataset_copy,
        block_dims=blocks,
        conv_dims=blocks,
        conv_alphas=",".join(["1"] * 23),
        LoRA_type="Kohya LoCon",
        conv_dim=4,
        lr_warmup=10,
        max_train_steps=40,
        lr_scheduler="constant_with_warmup",
    )
    loaded = load_train_config(dataset_copy, config_path=path)
    config = loaded.config
    assert config.network_options.conv_block_dims == (2,) * 23 and config.conv_dim == 4
    assert config.lr_warmup_steps == 0.1 and config.max_train_steps == 40 and config.max_train_epochs is None
    assert any("conv_dims: older kohya_ss GUI name; read as conv_block_dims" in w for w in loaded.warnings)


def test_lora_types_lorapipe_does_not_train_and_contradictions_are_named(dataset_copy: Path) -> None:
    with pytest.raises(ConfigProblems, match="LoRA_type = 'Kohya DyLoRA' trains a network lorapipe does not"):
        load_train_config(dataset_copy, config_path=_gui_toml(dataset_copy, LoRA_type="Kohya DyLoRA"))
    with pytest.raises(ConfigProblems, match="network_module = 'networks.lora' contradicts LoRA_type"):
        load_train_config(
            dataset_copy, config_path=_gui_toml(dataset_copy, LoRA_type="LyCORIS/LoHa", network_module="networks.lora")
        )
    with pytest.raises(ConfigProblems, match="algo=ia3 is a LyCORIS algorithm lorapipe does not train"):
        load_train_config(
            dataset_copy,
            config_path=_gui_toml(
                dataset_copy, LoRA_type=None, network_module="lycoris.kohya", network_args=["algo=ia3"]
            ),
        )
    bad_json = dataset_copy / "broken.json"
    bad_json.write_text('{"LoRA_type": "Standard",')
    with pytest.raises(Exception, match="broken.json: not valid JSON"):
        load_train_config(dataset_copy, config_path=bad_json)


def test_hand_written_empty_string_for_a_text_key_is_still_an_error(dataset_copy: Path) -> None:
    # Outside GUI files (no LoRA_type) only numbers read "" as unset.
    path = _gui_toml(dataset_copy, LoRA_type=None)
    path.write_text(path.read_text().replace('training_comment = ""', 'output_name = ""'))
    with pytest.raises(ConfigProblems, match="output_name"):
        load_train_config(dataset_copy, config_path=path)


def test_wandb_tracker_writes_an_offline_run(tiny_model_dir, sample_dataset_dir, tmp_path) -> None:
    pytest.importorskip("wandb")  # an optional tracker; `make test` installs it
    from lorapipe.train.run import run_training

    result = run_training(
        sample_dataset_dir,
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "out",
        show_progress=False,
        step_lines=False,
        overrides=("max_train_steps=2", 'log_with="wandb"', 'log_prefix="gui-"'),
    )
    assert result.status == "finished"
    (run,) = (tmp_path / "out" / "logs" / "wandb").glob("offline-run-*/run-*.wandb")
    # The run file holds protobuf records whose history items carry the tag and the value as JSON text.
    data = run.read_bytes()
    assert b"loss/current" in data and b"global_step" in data and b"lr/unet" in data
    for loss in result.losses:
        assert json.dumps(loss).encode() in data


def test_a_preset_with_its_authors_paths_passes_check_and_train_refuses_them(dataset_copy: Path) -> None:
    """A GUI preset (no base model; one shipped SDXL preset keeps its author's `lora_network_weights` on D:)
    passes `config check` with the paths named in warnings; a training run refuses them, as the GUI does."""
    import io

    from lorapipe.config.report import check_file

    preset = {key: value for key, value in GUI_FORM.items() if key != "pretrained_model_name_or_path"}
    preset["lora_network_weights"] = "D:/lycoris/sdxl\\phase one-lora.safetensors"
    path = dataset_copy / "SDXL - finetuning phase 2.json"
    path.write_text(json.dumps(preset, indent=2))
    out = io.StringIO()
    assert check_file(str(path), out=out) == 0
    text = out.getvalue()
    assert "network_weights: D:/lycoris/sdxl\\phase one-lora.safetensors does not exist" in text
    assert "pretrained_model_name_or_path is missing" in text and "`lorapipe train` refuses this" in text
    with pytest.raises(ConfigProblems) as problems:
        load_train_config(dataset_copy, config_path=path)
    assert [e.split(": ", 1)[1].split(" ", 1)[0] for e in problems.value.errors] == [
        "pretrained_model_name_or_path",
        "network_weights:",
    ]
