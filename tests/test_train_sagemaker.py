"""The SageMaker entry point on a fake /opt/ml root (in process; the container contract tests run it as a
subprocess with SIGTERM)."""

from __future__ import annotations

import json
import shutil

from lorapipe.train.sagemaker_entry import main
from tests.train_fixtures import one_thread  # noqa: F401 (autouse fixture)


def _root(tmp_path, sample_dataset_dir, hyperparameters):
    root = tmp_path / "opt_ml"
    shutil.copytree(sample_dataset_dir, root / "input" / "data" / "train")
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    return root


def test_entry_trains_into_model_dir_and_resumes_from_checkpoints(tiny_model_dir, sample_dataset_dir, tmp_path):
    hps = {"pretrained_model_name_or_path": str(tiny_model_dir), "max_train_steps": "2", "save_state": "true",
           "save_every_n_steps": "1", "save_every_n_epochs": "0"}
    root = _root(tmp_path, sample_dataset_dir, hps)
    assert main(["--opt-ml-root", str(root), "train"]) == 0
    assert (root / "model" / "dwjz_toy.safetensors").is_file()
    summary = json.loads((root / "model" / "train_summary.json").read_text())
    assert summary["steps_done"] == 2 and not (root / "output" / "failure").exists()
    assert (root / "checkpoints" / "dwjz_toy-step00000002-state" / "train_state.json").is_file()
    # A new job with more steps continues from the newest state in the checkpoint folder.
    hps["max_train_steps"] = "3"
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hps))
    assert main(["--opt-ml-root", str(root)]) == 0
    summary = json.loads((root / "model" / "train_summary.json").read_text())
    assert summary["steps_done"] == 3 and len(summary["losses"]) == 1


def test_entry_writes_the_failure_file(tiny_model_dir, sample_dataset_dir, tmp_path):
    root = _root(tmp_path, sample_dataset_dir, {"pretrained_model_name_or_path": str(tiny_model_dir),
                                                 "no_such_option": "1"})
    assert main(["--opt-ml-root", str(root)]) != 0
    failure = (root / "output" / "failure").read_text()
    assert "no_such_option" in failure.splitlines()[0]
    assert not (root / "model" / "dwjz_toy.safetensors").exists()
