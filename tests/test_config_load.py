"""Loading Kohya training TOMLs: the recipe unchanged, flat == sectioned, --set, fallbacks, errors naming key+file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from config_fixtures import FLAT, OUTSIDE_SAGEMAKER, RECIPE, SECTIONED, minimal_config, write_config

from lorapipe.config import ConfigProblems, TrainConfig, default_output_dir, load_train_config
from lorapipe.errors import ConfigError, DatasetError

needs_no_opt_ml = pytest.mark.skipif(not OUTSIDE_SAGEMAKER, reason="/opt/ml exists here (SageMaker container)")


@pytest.fixture()
def dataset_copy(sample_dataset_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the sample dataset folder (images + config)."""
    target = tmp_path / "0001-dataset"
    shutil.copytree(sample_dataset_dir, target)
    return target


def _errors(exc_info: pytest.ExceptionInfo) -> str:
    return str(exc_info.value)


@needs_no_opt_ml
def test_recipe_config_loads_unchanged_with_warnings(sample_dataset_dir: Path) -> None:
    loaded = load_train_config(sample_dataset_dir, config_path=RECIPE)
    config = loaded.config
    assert isinstance(config, TrainConfig)
    # The recipe's values arrive under their Kohya names.
    assert config.learning_rate == 0.0004 and config.unet_lr == 0.0004 and config.text_encoder_lr == 0.0004
    assert config.network_dim == 256 and config.network_alpha == 1
    assert config.optimizer_type == "Adafactor"
    assert config.optimizer_args == ("scale_parameter=False", "relative_step=False", "warmup_init=False")
    assert config.mixed_precision == "bf16" and config.save_precision == "bf16" and config.no_half_vae
    assert config.noise_offset == pytest.approx(0.0357)
    assert config.max_train_epochs == 1 and config.max_token_length == 75
    assert config.cache_latents and config.cache_latents_to_disk and config.gradient_checkpointing
    # sd-scripts ignores the top-level conv keys for a Standard (unset LoRA_type) network.
    assert config.conv_dim is None and config.conv_alpha is None
    # The SageMaker paths fall back to the dataset folder and the default output folder.
    assert Path(config.output_dir) == default_output_dir(sample_dataset_dir)
    assert config.dataset.subsets[0].image_dir.parent == sample_dataset_dir
    assert config.dataset.resolution == (1024, 1024)
    text = "\n".join(loaded.warnings)
    for gui_key in ("sdxl", "model_list", "unit", "train_on_input", "noise_offset_type", "xformers", "conv_dim"):
        assert f"{gui_key}" in text, gui_key
    assert "/opt/ml/model" in text and "/opt/ml/input/data/train" in text
    # Keys that are off (mem_eff_attn = false, ...) produce no warning.
    assert "mem_eff_attn" not in text and "persistent_data_loader_workers" not in text


@needs_no_opt_ml
def test_flat_and_sectioned_files_give_the_same_config(sample_dataset_dir: Path) -> None:
    flat = load_train_config(sample_dataset_dir, config_path=FLAT).config.to_dict()
    sectioned = load_train_config(sample_dataset_dir, config_path=SECTIONED).config.to_dict()
    for d in (flat, sectioned):
        d.pop("source")
        d["dataset"].pop("source")
    assert flat == sectioned
    assert flat["network_dim"] == 16 and flat["network_dropout"] == 0.1
    assert flat["optimizer_type"] == "Adafactor"  # case-insensitive, canonical spelling
    assert flat["lr_scheduler"] == "cosine_with_restarts" and flat["lr_warmup_steps"] == 10
    assert flat["sample_prompts"].endswith("prompts.txt") and Path(flat["sample_prompts"]).is_file()
    assert flat["dataset"]["batch_size"] == 2 and flat["dataset"]["max_token_length"] == 150


def test_defaults_are_sd_scripts_defaults(dataset_copy: Path) -> None:
    config = load_train_config(dataset_copy, config_path=write_config(dataset_copy, minimal_config())).config
    assert config.network_dim == 4 and config.network_alpha == 1.0
    assert config.learning_rate == 2e-6 and config.unet_lr is None and config.text_encoder_lr is None
    assert config.max_train_steps == 1600 and config.max_train_epochs is None
    assert config.optimizer_type == "AdamW" and config.lr_scheduler == "constant"
    assert config.mixed_precision == "no" and config.save_precision is None
    assert config.sample_sampler == "ddim" and config.loss_type == "l2" and config.huber_schedule == "snr"
    assert config.multires_noise_discount == 0.3 and config.max_grad_norm == 1.0
    assert config.network_module == "networks.lora" and config.save_model_as == "safetensors"
    assert config.dataset.subsets and config.dataset_dir == dataset_copy


def test_set_overrides_parse_toml_literals_with_string_fallback(dataset_copy: Path) -> None:
    path = write_config(dataset_copy, minimal_config(learning_rate=0.001))
    config = load_train_config(
        dataset_copy,
        config_path=path,
        overrides=[
            "learning_rate=1e-4",
            "output_name=my lora",
            "cache_latents=true",
            'optimizer_args=["weight_decay=0.01"]',
            "network_args=conv_dim=8 conv_alpha=4",
            "text_encoder_lr=[5e-5, 5e-5]",
            "resolution=96,96",
        ],
    ).config
    assert config.learning_rate == 1e-4
    assert config.output_name == "my lora"
    assert config.cache_latents is True
    assert config.optimizer_args == ("weight_decay=0.01",)
    assert config.conv_dim == 8 and config.conv_alpha == 4.0
    assert config.text_encoder_lr == 5e-5
    assert config.dataset.resolution == (96, 96)


def test_unknown_set_key_is_an_error_naming_it(dataset_copy: Path) -> None:
    path = write_config(dataset_copy, minimal_config())
    with pytest.raises(ConfigError) as info:
        load_train_config(dataset_copy, config_path=path, overrides=["learning_rat=1e-4"])
    assert "--set: learning_rat: unknown key" in str(info.value) and "did you mean learning_rate" in str(info.value)
    with pytest.raises(ConfigError, match="key=value"):
        load_train_config(dataset_copy, config_path=path, overrides=["learning_rate"])


def test_unknown_key_in_file_names_key_and_file(dataset_copy: Path) -> None:
    path = write_config(dataset_copy, minimal_config(network_dimm=8))
    with pytest.raises(ConfigProblems) as info:
        load_train_config(dataset_copy, config_path=path)
    assert str(path) in _errors(info) and "network_dimm" in _errors(info) and "network_dim" in _errors(info)


def test_sectioned_error_names_the_section(dataset_copy: Path) -> None:
    text = minimal_config() + '\n[optimizer_arguments]\nlearning_rate = "fast"\n'
    path = write_config(dataset_copy, text)
    with pytest.raises(ConfigProblems) as info:
        load_train_config(dataset_copy, config_path=path)
    assert f"{path} [optimizer_arguments]: learning_rate must be a number" in _errors(info)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("network_dim", 0, "network_dim = 0 must be at least 1"),
        ("network_dim", "big", "network_dim must be a whole number"),
        ("cache_latents", "maybe", "cache_latents must be true or false"),
        ("mixed_precision", "fp8", "mixed_precision = 'fp8' is not one of no, fp16, bf16"),
        ("save_precision", "int8", "save_precision"),
        ("max_token_length", 100, "max_token_length = 100 must be 75, 150 or 225"),
        ("optimizer_type", "AdamX", "did you mean AdamW"),
        ("lr_scheduler", "exponential", "lr_scheduler = 'exponential' is not one of"),
        ("sample_sampler", "dpm++_2m_karras", "sample_sampler"),
        ("loss_type", "l3", "loss_type"),
        ("save_model_as", "ckpt", "safetensors only"),
        ("save_model_as", "diffusers", "safetensors only"),
        ("network_module", "networks.dylora", "networks.lora"),
        ("lr_warmup_steps", 100.0, "fraction of all steps"),
        ("network_args", ["conv_dim"], "not key=value"),
        ("network_args", ["block_dims=1,2,3"], "block_dims"),
        ("optimizer_args", ["weight_decay"], "not key=value"),
        ("v2", True, "SDXL only"),
        ("weighted_captions", True, "caption weights"),
        ("LoRA_type", "LyCORIS/iA3", "LoRA_type = 'LyCORIS/iA3' trains a network lorapipe does not"),
        ("network_dropout", 1.5, "at most 1"),
    ],
)
def test_wrong_types_and_impossible_values_are_errors(
    dataset_copy: Path, key: str, value: object, fragment: str
) -> None:
    path = write_config(dataset_copy, minimal_config(**{key: value}))
    with pytest.raises(ConfigError) as info:
        load_train_config(dataset_copy, config_path=path)
    message = str(info.value)
    assert fragment in message
    assert str(path) in message and key.split("_")[0] in message


def test_several_errors_are_reported_together(dataset_copy: Path) -> None:
    path = write_config(dataset_copy, minimal_config(network_dim=0, bogus_key=1, mixed_precision="fp8"))
    with pytest.raises(ConfigProblems) as info:
        load_train_config(dataset_copy, config_path=path)
    assert len(info.value.errors) == 3


def test_rejected_keys_are_fine_while_off(dataset_copy: Path) -> None:
    path = write_config(dataset_copy, minimal_config(v2=False, fp8_base=False, masked_loss=False, initial_step=0))
    load_train_config(dataset_copy, config_path=path)


def test_gui_aliases_are_mapped_with_a_warning(dataset_copy: Path) -> None:
    path = write_config(dataset_copy, minimal_config(optimizer="Lion", sdxl_no_half_vae=True, use_8bit_adam=False))
    loaded = load_train_config(dataset_copy, config_path=path)
    assert loaded.config.optimizer_type == "Lion" and loaded.config.no_half_vae
    assert any("optimizer: kohya_ss GUI name" in w for w in loaded.warnings)
    path = write_config(dataset_copy, minimal_config(use_8bit_adam=True, optimizer_type="Lion"))
    with pytest.raises(ConfigError, match="contradicts optimizer_type"):
        load_train_config(dataset_copy, config_path=path)


def test_locon_lora_type_maps_top_level_conv_keys_into_network_args(dataset_copy: Path) -> None:
    path = write_config(dataset_copy, minimal_config(LoRA_type="Kohya LoCon", conv_dim=8, conv_alpha=2))
    config = load_train_config(dataset_copy, config_path=path).config
    assert config.conv_dim == 8 and config.conv_alpha == 2.0
    assert config.network_args == ("conv_dim=8", "conv_alpha=2")
    path = write_config(dataset_copy, minimal_config(LoRA_type="Standard", conv_dim=8, conv_alpha=2))
    loaded = load_train_config(dataset_copy, config_path=path)
    assert loaded.config.conv_dim is None and loaded.config.network_args == ()
    assert any("conv_dim, conv_alpha ignored" in w and "'Standard'" in w for w in loaded.warnings)


def test_network_args_conv_alpha_defaults_to_one(dataset_copy: Path) -> None:
    path = write_config(dataset_copy, minimal_config(network_args=["conv_dim=4", "unknown_arg=1"]))
    loaded = load_train_config(dataset_copy, config_path=path)
    assert loaded.config.conv_dim == 4 and loaded.config.conv_alpha == 1.0
    assert any("unknown_arg" in w for w in loaded.warnings)


def test_cli_flags_beat_the_file(dataset_copy: Path, tmp_path: Path) -> None:
    path = write_config(dataset_copy, minimal_config(output_dir=str(tmp_path / "from-file")))
    config = load_train_config(
        dataset_copy, config_path=path, output_dir=tmp_path / "cli", base_model="/models/tiny"
    ).config
    assert Path(config.output_dir) == tmp_path / "cli"
    assert config.pretrained_model_name_or_path == "/models/tiny"
    config = load_train_config(dataset_copy, config_path=path).config
    assert Path(config.output_dir) == tmp_path / "from-file"


def test_missing_base_model_is_an_error_unless_given_on_the_cli(dataset_copy: Path) -> None:
    path = write_config(dataset_copy, minimal_config(pretrained_model_name_or_path=None))
    with pytest.raises(ConfigError, match="pretrained_model_name_or_path is missing"):
        load_train_config(dataset_copy, config_path=path)
    config = load_train_config(dataset_copy, config_path=path, base_model="some/model").config
    assert config.pretrained_model_name_or_path == "some/model"


def test_relative_paths_are_found_beside_the_config(dataset_copy: Path) -> None:
    (dataset_copy / "prompts.txt").write_text("dwjz toy --w 64 --h 64\n", encoding="utf-8")
    path = write_config(
        dataset_copy, minimal_config(sample_prompts="prompts.txt", logging_dir="logs", output_dir="out")
    )
    config = load_train_config(dataset_copy, config_path=path).config
    assert config.sample_prompts == str(dataset_copy / "prompts.txt")
    assert config.output_dir == str(dataset_copy / "out") and config.logging_dir == str(dataset_copy / "logs")


def test_missing_network_weights_or_resume_is_an_error(dataset_copy: Path) -> None:
    for key in ("network_weights", "resume"):
        path = write_config(dataset_copy, minimal_config(**{key: "nowhere/x.safetensors"}))
        with pytest.raises(ConfigError, match=f"{key}: .*does not exist"):
            load_train_config(dataset_copy, config_path=path)


def test_dataset_config_file_is_refused_as_training_config(dataset_copy: Path) -> None:
    path = write_config(
        dataset_copy,
        '[general]\nresolution = 64\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = "x"\n',
        name="ds.toml",
    )
    with pytest.raises(ConfigError, match="dataset_config file"):
        load_train_config(dataset_copy, config_path=path)


def test_dataset_config_key_builds_the_blueprint_from_that_file(dataset_copy: Path) -> None:
    subset = next(p for p in dataset_copy.iterdir() if p.is_dir())
    (dataset_copy / "datasets.toml").write_text(
        '[general]\ncaption_extension = ".txt"\n[[datasets]]\nresolution = 64\nbatch_size = 3\n'
        f'[[datasets.subsets]]\nimage_dir = "{subset}"\nnum_repeats = 2\nclass_tokens = "dwjz toy"\n',
        encoding="utf-8",
    )
    path = write_config(dataset_copy, minimal_config(dataset_config="datasets.toml"))
    config = load_train_config(dataset_copy, config_path=path).config
    assert config.dataset.batch_size == 3 and config.dataset.subsets[0].num_repeats == 2


def test_missing_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset folder does not exist"):
        load_train_config(tmp_path / "nope")
    with pytest.raises(ConfigError, match="config file does not exist"):
        load_train_config(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text("learning_rate = = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_train_config(tmp_path, config_path=bad)


def test_to_dict_is_json_serialisable(dataset_copy: Path) -> None:
    import json

    config = load_train_config(dataset_copy, config_path=write_config(dataset_copy, minimal_config())).config
    data = json.loads(json.dumps(config.to_dict()))
    assert data["network_dim"] == 4 and data["dataset"]["resolution"] == [64, 64]
    assert data["dataset_dir"] == str(dataset_copy)


def test_notes_for_sd_scripts_precedence_rules(dataset_copy: Path) -> None:
    path = write_config(
        dataset_copy, minimal_config(max_train_epochs=3, max_train_steps=10, text_encoder_lr=[1e-4, 2e-4])
    )
    loaded = load_train_config(dataset_copy, config_path=path)
    assert loaded.config.max_train_epochs == 3 and loaded.config.text_encoder_lr == 1e-4
    text = "\n".join(loaded.warnings)
    assert "max_train_epochs = 3 overrides max_train_steps = 10" in text
    assert "uses the first value" in text


@pytest.mark.parametrize("name", ["sub/dir", "", ".."])
def test_output_name_must_be_a_file_name(dataset_copy: Path, name: str) -> None:
    path = write_config(dataset_copy, minimal_config(output_name=name))
    with pytest.raises(ConfigError, match="output_name"):
        load_train_config(dataset_copy, config_path=path)


@needs_no_opt_ml
def test_sagemaker_paths_fall_back_to_local_folders(dataset_copy: Path, tmp_path: Path) -> None:
    (dataset_copy / "prompts.txt").write_text("dwjz toy --w 64 --h 64\n", encoding="utf-8")
    path = write_config(
        dataset_copy,
        minimal_config(
            train_data_dir="/opt/ml/input/data/train",
            output_dir="/opt/ml/model",
            sample_prompts="/opt/ml/input/data/train/prompts.txt",
            logging_dir="/opt/ml/output/tensorboard",
        ),
    )
    loaded = load_train_config(dataset_copy, config_path=path, output_dir=tmp_path / "run")
    config = loaded.config
    assert config.output_dir == str(tmp_path / "run")
    assert config.sample_prompts == str(dataset_copy / "prompts.txt")
    assert config.logging_dir == str(tmp_path / "run" / "logs")
    assert config.dataset.subsets and all(s.image_dir.parent == dataset_copy for s in config.dataset.subsets)
    assert sum("exists only inside SageMaker" in w for w in loaded.warnings) == 3  # prompts, logs, data dir
