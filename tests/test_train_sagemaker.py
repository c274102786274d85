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
    hps = {
        "pretrained_model_name_or_path": str(tiny_model_dir),
        "max_train_steps": "2",
        "save_state": "true",
        "save_every_n_steps": "1",
        "save_every_n_epochs": "0",
    }
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


def test_the_config_channel_wins_over_the_dataset_toml(tiny_model_dir, sample_dataset_dir, tmp_path):
    """The pipeline ships an explicit --config as the `config` channel; the dataset's own TOML says 32 steps."""
    root = _root(
        tmp_path,
        sample_dataset_dir,
        {"pretrained_model_name_or_path": str(tiny_model_dir), "sample_prompts": "", "sample_every_n_steps": "0"},
    )
    config = root / "input" / "data" / "config"
    config.mkdir(parents=True)
    dataset_toml = (root / "input" / "data" / "train" / "kohya-sdxl-config.toml").read_text()
    (config / "kohya-sdxl-config.toml").write_text(dataset_toml.replace("max_train_steps = 32", "max_train_steps = 1"))
    assert main(["--opt-ml-root", str(root)]) == 0
    assert json.loads((root / "model" / "train_summary.json").read_text())["steps_done"] == 1


def test_entry_writes_the_failure_file(tiny_model_dir, sample_dataset_dir, tmp_path):
    root = _root(
        tmp_path, sample_dataset_dir, {"pretrained_model_name_or_path": str(tiny_model_dir), "no_such_option": "1"}
    )
    assert main(["--opt-ml-root", str(root)]) != 0
    failure = (root / "output" / "failure").read_text()
    assert "no_such_option" in failure.splitlines()[0]
    assert not (root / "model" / "dwjz_toy.safetensors").exists()


def test_entry_trains_in_several_processes_and_reports_a_stop_as_143(tiny_model_dir, sample_dataset_dir, tmp_path):
    """LORAPIPE_PROCESSES=2 (on a GPU instance: one per GPU) -> two CPU processes here; SIGTERM stops both with
    state saved in checkpoints, and the entry point exits 143 (stopped), not 1 (the launcher's own code)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    hps = {"pretrained_model_name_or_path": str(tiny_model_dir), "max_train_steps": "400", "seed": "3"}
    root = _root(tmp_path, sample_dataset_dir, hps)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env.update(LORAPIPE_PROCESSES="2", OMP_NUM_THREADS="1")
    log = tmp_path / "entry.log"
    with log.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "lorapipe.train.sagemaker_entry", "--opt-ml-root", str(root), "train"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 240
        while "step=2 " not in log.read_text() and time.monotonic() < deadline:
            assert child.poll() is None, log.read_text()[-3000:]
            time.sleep(0.1)
        child.send_signal(signal.SIGTERM)
        code = child.wait(timeout=120)
    text = log.read_text()
    assert "training in 2 processes" in text
    assert code == 143, text[-3000:]
    assert not (root / "output" / "failure").exists()
    summary = json.loads((root / "model" / "train_summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["batches_per_epoch"] == 120  # 12 images x 20 repeats, shared by two processes
    states = list((root / "checkpoints").glob("dwjz_toy-step*-state"))
    assert len(states) == 1 and (states[0] / "train_state.json").is_file()
