"""networks.lora's network_args beyond conv_dim (dropouts, block-wise ranks, LoRA+) and torch_compile: parsed into
`TrainConfig.network_options` / attributes, bad values refused naming key and file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from config_fixtures import minimal_config, write_config

from lorapipe.config import ConfigProblems, load_train_config

BLOCKS = 23


@pytest.fixture()
def dataset_copy(sample_dataset_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "0001-dataset"
    shutil.copytree(sample_dataset_dir, target)
    return target


def _load(folder: Path, *network_args: str, **keys: object):
    path = write_config(folder, minimal_config(network_args=list(network_args), **keys))
    return load_train_config(folder, config_path=path), path


def _problems(folder: Path, *network_args: str, **keys: object) -> tuple[str, Path]:
    path = write_config(folder, minimal_config(network_args=list(network_args), **keys))
    with pytest.raises(ConfigProblems) as caught:
        load_train_config(folder, config_path=path)
    return str(caught.value), path


def _names(text: str, key: str, value: str) -> bool:
    return f"network_args {key}={value}" in text or f"network_args {key}={value!r}" in text


def _csv(values) -> str:
    return ",".join(str(v) for v in values)


def test_nothing_given_leaves_every_option_at_sd_scripts_default(dataset_copy: Path) -> None:
    options = _load(dataset_copy)[0].config.network_options
    assert options.rank_dropout is None and options.module_dropout is None
    assert options.block_dims is None and options.conv_block_dims is None
    assert options.loraplus_unet_lr_ratio is None and options.loraplus_text_encoder_lr_ratio is None


@pytest.mark.parametrize("key", ["rank_dropout", "module_dropout"])
def test_dropouts_are_read(dataset_copy: Path, key: str) -> None:
    loaded, _ = _load(dataset_copy, f"{key}=0.25")
    assert getattr(loaded.config.network_options, key) == 0.25
    assert not any(key in w for w in loaded.warnings)


@pytest.mark.parametrize("key", ["rank_dropout", "module_dropout"])
@pytest.mark.parametrize("bad", ["1", "1.5", "-0.1", "lots"])
def test_bad_dropouts_are_refused_naming_key_and_file(dataset_copy: Path, key: str, bad: str) -> None:
    text, path = _problems(dataset_copy, f"{key}={bad}")
    assert str(path) in text and _names(text, key, bad)


def test_block_dims_and_alphas_are_read_per_block(dataset_copy: Path) -> None:
    dims = [0] + [4] * 9 + [2] * 3 + [8] * 9 + [0]
    alphas = [1.0] * BLOCKS
    conv = [2] * BLOCKS
    loaded, _ = _load(
        dataset_copy,
        f"block_dims={_csv(dims)}",
        f"block_alphas={_csv(alphas)}",
        f"conv_block_dims={_csv(conv)}",
        "conv_block_alphas=" + _csv([0.5] * BLOCKS),
    )
    options = loaded.config.network_options
    assert options.block_dims == tuple(dims) and options.block_alphas == tuple(alphas)
    assert options.conv_block_dims == tuple(conv) and options.conv_block_alphas == (0.5,) * BLOCKS
    assert all(isinstance(v, int) for v in options.block_dims)


@pytest.mark.parametrize(
    "key,value,says",
    [
        ("block_dims", _csv([4] * 22), "22 values given"),
        ("block_dims", _csv([4] * 24), "24 values given"),
        ("block_dims", _csv([4] * 22 + [1.5]), "whole numbers"),
        ("block_dims", _csv([4] * 22 + ["x"]), "whole numbers"),
        ("block_alphas", _csv([1] * 22 + [-1]), "0 or more"),
        ("conv_block_dims", _csv([2] * 20), "20 values given"),
    ],
)
def test_bad_block_lists_are_refused(dataset_copy: Path, key: str, value: str, says: str) -> None:
    extra = [] if key == "block_dims" else [f"block_dims={_csv([4] * BLOCKS)}"]
    text, path = _problems(dataset_copy, f"{key}={value}", *extra)
    assert str(path) in text and f"network_args {key}" in text and says in text


def test_block_alphas_without_block_dims_are_ignored_as_in_sd_scripts(dataset_copy: Path) -> None:
    loaded, _ = _load(dataset_copy, f"block_alphas={_csv([1] * BLOCKS)}")
    assert loaded.config.network_options.block_alphas is None
    assert any("block_alphas is ignored without block_dims" in w for w in loaded.warnings)


def test_loraplus_ratio_sets_both_parts_and_specific_ratios_win(dataset_copy: Path) -> None:
    options = _load(dataset_copy, "loraplus_lr_ratio=4")[0].config.network_options
    assert options.loraplus_unet_lr_ratio == 4 and options.loraplus_text_encoder_lr_ratio == 4
    options = _load(dataset_copy, "loraplus_lr_ratio=4", "loraplus_unet_lr_ratio=16")[0].config.network_options
    assert options.loraplus_unet_lr_ratio == 16 and options.loraplus_text_encoder_lr_ratio == 4
    options = _load(dataset_copy, "loraplus_text_encoder_lr_ratio=2")[0].config.network_options
    assert options.loraplus_unet_lr_ratio is None and options.loraplus_text_encoder_lr_ratio == 2


@pytest.mark.parametrize("key", ["loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio"])
@pytest.mark.parametrize("bad", ["0", "-2", "big"])
def test_bad_loraplus_ratios_are_refused(dataset_copy: Path, key: str, bad: str) -> None:
    text, path = _problems(dataset_copy, f"{key}={bad}")
    assert str(path) in text and _names(text, key, bad)


@pytest.mark.parametrize("key", ["down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold"])
def test_block_lr_weights_stay_refused_as_not_implemented(dataset_copy: Path, key: str) -> None:
    text, path = _problems(dataset_copy, f"{key}=1")
    assert str(path) in text and f"network_args {key}=1" in text and "not implemented" in text


def test_set_override_names_set_as_the_source(dataset_copy: Path) -> None:
    path = write_config(dataset_copy, minimal_config())
    with pytest.raises(ConfigProblems) as caught:
        load_train_config(dataset_copy, config_path=path, overrides=('network_args=["rank_dropout=2"]',))
    assert "--set" in str(caught.value) and "rank_dropout=2" in str(caught.value)


def test_gui_top_level_fields_join_network_args(dataset_copy: Path) -> None:
    path = write_config(
        dataset_copy,
        minimal_config(
            LoRA_type="Standard", rank_dropout=0.1, loraplus_lr_ratio=8, block_dims=_csv([2] * BLOCKS), module_dropout=0
        ),
    )
    loaded = load_train_config(dataset_copy, config_path=path)
    config = loaded.config
    assert "rank_dropout=0.1" in config.network_args and "loraplus_lr_ratio=8" in config.network_args
    assert not any(item.startswith("module_dropout") for item in config.network_args)  # 0 = off, as the GUI
    assert config.network_options.rank_dropout == 0.1 and config.network_options.block_dims == (2,) * BLOCKS
    assert any("rank_dropout" in w and "network_args" in w for w in loaded.warnings)
    # network_args wins where it sets the key itself.
    path = write_config(dataset_copy, minimal_config(rank_dropout=0.1, network_args=["rank_dropout=0.3"]))
    loaded = load_train_config(dataset_copy, config_path=path)
    assert loaded.config.network_options.rank_dropout == 0.3
    assert any("rank_dropout ignored: network_args already sets" in w for w in loaded.warnings)


def test_gui_block_lr_weight_field_is_refused(dataset_copy: Path) -> None:
    path = write_config(dataset_copy, minimal_config(down_lr_weight="1,1,1,1,1,1,1,1,1"))
    with pytest.raises(ConfigProblems) as caught:
        load_train_config(dataset_copy, config_path=path)
    assert "down_lr_weight" in str(caught.value) and "not implement" in str(caught.value)


def test_torch_compile_and_dynamo_backend_are_attributes(dataset_copy: Path) -> None:
    loaded, _ = _load(dataset_copy)
    assert loaded.config.torch_compile is False and loaded.config.dynamo_backend == "inductor"
    loaded, _ = _load(dataset_copy, torch_compile=True, dynamo_backend="EAGER")
    assert loaded.config.torch_compile is True and loaded.config.dynamo_backend == "eager"
    assert not any("torch_compile" in w for w in loaded.warnings)
    loaded, _ = _load(dataset_copy, torch_compile=True, dynamo_backend="no")
    assert any("compiles nothing" in w for w in loaded.warnings)
    text, path = _problems(dataset_copy, torch_compile=True, dynamo_backend="turbo")
    assert str(path) in text and "dynamo_backend = 'turbo'" in text


def test_network_dropout_with_lycoris_is_a_named_warning(dataset_copy: Path) -> None:
    """sd-scripts passes network_dropout to LyCORIS as neuron_dropout, which LyCORIS ignores: say so, name the key."""
    loaded, path = _load(dataset_copy, "algo=loha", network_module="lycoris.kohya", network_dropout=0.1)
    assert loaded.config.lycoris.dropout == 0.0
    (warning,) = [w for w in loaded.warnings if "network_dropout" in w]
    assert str(path) in warning and 'network_args: "dropout=0.1"' in warning
    loaded, _ = _load(dataset_copy, "algo=loha", "dropout=0.1", network_module="lycoris.kohya")
    assert loaded.config.lycoris.dropout == 0.1 and not [w for w in loaded.warnings if "network_dropout" in w]
