"""lorapipe.container_contract: the SageMaker BYOC files, parsed the way a real job lays them out."""

from __future__ import annotations

import json

import pytest

from lorapipe.container_contract import (
    FAILURE_LIMIT,
    OptMl,
    failure_text,
    find_dataset_config,
    hyperparameters_to_overrides,
    normalise_s3_prefix,
    read_hyperparameters,
    read_resource_config,
    require_channel,
    write_failure,
)
from lorapipe.errors import ConfigError, DatasetError


@pytest.fixture
def opt_ml(tmp_path) -> OptMl:
    root = OptMl(tmp_path / "opt-ml")
    root.input_config_dir.mkdir(parents=True)
    return root


def test_root_from_argument_then_env_then_default(tmp_path, monkeypatch):
    monkeypatch.delenv("LORAPIPE_OPT_ML", raising=False)
    assert OptMl.resolve().root.as_posix() == "/opt/ml"
    monkeypatch.setenv("LORAPIPE_OPT_ML", str(tmp_path))
    assert OptMl.resolve().root == tmp_path
    assert OptMl.resolve(tmp_path / "x").root == tmp_path / "x"
    paths = OptMl(tmp_path)
    assert paths.hyperparameters_file == tmp_path / "input/config/hyperparameters.json"
    assert paths.channel_dir() == tmp_path / "input/data/train"
    assert paths.failure_file == tmp_path / "output/failure"
    assert paths.checkpoints_dir == tmp_path / "checkpoints" and paths.model_dir == tmp_path / "model"


def test_hyperparameters_are_strings_and_become_set_overrides(opt_ml):
    opt_ml.hyperparameters_file.write_text(
        json.dumps(
            {
                "max_train_steps": "2",
                "learning_rate": 0.001,
                "cache_latents": True,
                "sagemaker_program": "train.py",
                "_tuning_objective_metric": "loss",
            }
        )
    )
    hyperparameters = read_hyperparameters(opt_ml)
    assert hyperparameters == {"max_train_steps": "2", "learning_rate": "0.001", "cache_latents": "true"}
    assert hyperparameters_to_overrides(hyperparameters) == (
        "cache_latents=true",
        "learning_rate=0.001",
        "max_train_steps=2",
    )


def test_missing_hyperparameters_mean_none(opt_ml):
    assert read_hyperparameters(opt_ml) == {}


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"optimizer_args": ["a=1"]}', "optimizer_args"),
    ],
)
def test_bad_hyperparameters_name_the_file(opt_ml, content, match):
    opt_ml.hyperparameters_file.write_text(content)
    with pytest.raises(ConfigError, match=match) as info:
        read_hyperparameters(opt_ml)
    assert "hyperparameters.json" in str(info.value)


def test_resource_config(opt_ml):
    assert read_resource_config(opt_ml).hosts == ("algo-1",)
    opt_ml.resource_config_file.write_text(
        json.dumps({"current_host": "algo-2", "hosts": ["algo-2", "algo-1"], "network_interface_name": "ethwe"})
    )
    config = read_resource_config(opt_ml)
    assert config.hosts == ("algo-1", "algo-2") and config.current_host == "algo-2"
    assert not config.is_leader and config.network_interface_name == "ethwe"
    opt_ml.resource_config_file.write_text(json.dumps({"current_host": "algo-9", "hosts": ["algo-1"]}))
    with pytest.raises(ConfigError, match="algo-9"):
        read_resource_config(opt_ml)


def test_empty_channel_names_the_usual_causes(opt_ml):
    with pytest.raises(DatasetError, match="channel is empty.*S3 prefix.*role"):
        require_channel(opt_ml)
    opt_ml.channel_dir().mkdir(parents=True)
    with pytest.raises(DatasetError):
        require_channel(opt_ml)
    (opt_ml.channel_dir() / "kohya-sdxl-config.toml").write_text("")
    assert require_channel(opt_ml) == opt_ml.channel_dir()
    assert find_dataset_config(opt_ml.channel_dir()).name == "kohya-sdxl-config.toml"


def test_failure_text_puts_cause_first_and_keeps_the_tail():
    detail = "\n".join(f"trace line {i}" for i in range(500)) + "\nRuntimeError: the real reason"
    text = failure_text("TrainingError: loss became NaN at step 7", detail)
    assert len(text) <= FAILURE_LIMIT
    assert text.startswith("TrainingError: loss became NaN at step 7\n")
    assert text.endswith("RuntimeError: the real reason")
    assert len(failure_text("x" * 5000)) == FAILURE_LIMIT
    assert failure_text("  a\nmultiline   cause ") == "a multiline cause"


def test_write_failure_is_atomic_and_bounded(opt_ml):
    path = write_failure(opt_ml, "DatasetError: empty channel", "tail " * 1000)
    assert path == opt_ml.failure_file
    text = path.read_text(encoding="utf-8")
    assert text.startswith("DatasetError: empty channel") and len(text) <= FAILURE_LIMIT
    assert [p.name for p in path.parent.iterdir()] == ["failure"]


def test_dataset_prefix_gets_a_trailing_slash():
    assert normalise_s3_prefix("s3://bucket/0001-dataset") == "s3://bucket/0001-dataset/"
    assert normalise_s3_prefix("s3://bucket/0001-dataset/") == "s3://bucket/0001-dataset/"
    with pytest.raises(DatasetError):
        normalise_s3_prefix("/local/0001-dataset")
