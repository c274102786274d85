"""`lorapipe config check FILE [--json]` and `lorapipe config keys`, and the torch-free promise."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from config_fixtures import OUTSIDE_SAGEMAKER, RECIPE, minimal_config, write_config

from lorapipe.cli.main import main


@pytest.fixture()
def dataset_copy(sample_dataset_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "0001-dataset"
    shutil.copytree(sample_dataset_dir, target)
    return target


@pytest.mark.skipif(not OUTSIDE_SAGEMAKER, reason="/opt/ml exists here")
def test_check_recipe_prints_effective_config_and_warnings(sample_dataset_dir: Path, capsys) -> None:
    code = main(["config", "check", str(RECIPE), "--dataset-dir", str(sample_dataset_dir)])
    out = capsys.readouterr().out
    assert code == 0
    assert "network_dim = 256" in out and 'optimizer_type = "Adafactor"' in out
    assert "warning:" in out and "model_list" in out and "OK: 0 error(s)" in out


def test_check_json_with_set_override(dataset_copy: Path, capsys) -> None:
    path = write_config(dataset_copy, minimal_config(model_list="custom"))
    code = main(["config", "check", str(path), "--json", "--set", "network_dim=32", "--set", "seed=7"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"] is True and report["errors"] == []
    assert report["config"]["network_dim"] == 32 and report["config"]["seed"] == 7
    assert report["config"]["dataset"]["resolution"] == [64, 64]
    assert any("model_list" in w for w in report["warnings"])


def test_check_exits_1_and_names_key_and_file_on_errors(dataset_copy: Path, capsys) -> None:
    path = write_config(dataset_copy, minimal_config(learning_rat=0.1, save_model_as="ckpt"))
    code = main(["config", "check", str(path)])
    out = capsys.readouterr().out
    assert code == 1
    assert f"error: {path}: learning_rat: unknown key (did you mean learning_rate?)" in out
    assert "save_model_as = 'ckpt'" in out and "INVALID: 2 error(s)" in out
    code = main(["config", "check", str(path), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["ok"] is False and len(report["errors"]) == 2 and report["config"] is None


def test_check_missing_file_exits_1(tmp_path: Path, capsys) -> None:
    assert main(["config", "check", str(tmp_path / "none.toml")]) == 1
    assert "does not exist" in capsys.readouterr().out


def test_keys_lists_statuses(capsys) -> None:
    assert main(["config", "keys", "--json"]) == 0
    rows = {row["key"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["learning_rate"]["status"] == "supported"
    assert rows["resolution"]["status"] == "dataset"
    assert rows["sdxl"]["status"] == "ignored" and rows["sdxl"]["gui"]
    assert rows["v2"]["status"] == "rejected"
    assert rows["use_8bit_adam"]["maps_to"] == "optimizer_type"


def test_config_check_never_imports_torch(dataset_copy: Path) -> None:
    path = write_config(dataset_copy, minimal_config())
    code = (
        "import sys; from lorapipe.cli.main import main; rc = main(['config', 'check', sys.argv[1], '--json']); "
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'heavy import'; sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ok"] is True
