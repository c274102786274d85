"""The training image's contract, run for real in a temporary /opt/ml: `container/train` (the program SageMaker
starts) on the tiny model and sample dataset, SIGTERM -> checkpoint -> non-zero exit, restart -> resume -> LoRA in
/opt/ml/model, and failures -> /opt/ml/output/failure with the cause first."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lorapipe.container_contract import FAILURE_LIMIT, OptMl

pytest.importorskip("lorapipe.train.sagemaker_entry", reason="trainer's container entry point not there yet")

PROGRAM = Path(__file__).resolve().parents[1] / "container" / "train"
STOP_WINDOW_S = 120  # docker stop -t 120: what SageMaker grants between SIGTERM and SIGKILL


def _opt_ml(root: Path, dataset: Path | None, hyperparameters: dict[str, str]) -> OptMl:
    opt_ml = OptMl(root)
    opt_ml.input_config_dir.mkdir(parents=True, exist_ok=True)
    opt_ml.hyperparameters_file.write_text(json.dumps(hyperparameters))
    opt_ml.resource_config_file.write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"})
    )
    channel = opt_ml.channel_dir()
    channel.parent.mkdir(parents=True, exist_ok=True)
    if dataset is not None:
        shutil.copytree(dataset, channel)
    else:
        channel.mkdir()
    return opt_ml


def _start(opt_ml: OptMl) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SM_")}  # no toolkit variables
    env.update(LORAPIPE_OPT_ML=str(opt_ml.root), PYTHONUNBUFFERED="1")
    # `train` as SageMaker passes it; the program must accept and drop it
    return subprocess.Popen(
        [sys.executable, str(PROGRAM), "train"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def _collect(process: subprocess.Popen, lines: list[str], seen_step: threading.Event) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if line.startswith("step="):
            seen_step.set()


@pytest.fixture(scope="module")
def hyperparameters(tiny_model_dir) -> dict[str, str]:
    return {"pretrained_model_name_or_path": str(tiny_model_dir), "max_train_steps": "10"}


def test_sigterm_checkpoints_and_a_restart_resumes(tmp_path, sample_dataset_dir, hyperparameters):
    opt_ml = _opt_ml(tmp_path / "opt-ml", sample_dataset_dir, hyperparameters)
    process = _start(opt_ml)
    lines: list[str] = []
    seen_step = threading.Event()
    reader = threading.Thread(target=_collect, args=(process, lines, seen_step), daemon=True)
    reader.start()
    assert seen_step.wait(240), "no step line: " + "".join(lines[-20:])
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(STOP_WINDOW_S)
    reader.join(5)
    assert time.monotonic() - signalled < STOP_WINDOW_S
    assert code != 0, "a stopped job must not look Completed"
    checkpoints = [p for p in opt_ml.checkpoints_dir.rglob("*") if p.is_file()]
    assert checkpoints, "SIGTERM left no checkpoint in /opt/ml/checkpoints: " + "".join(lines[-20:])
    assert not list(opt_ml.model_dir.glob("*.safetensors")), "an interrupted job has no final model"

    # A new job with the same checkpoint location (spot restart): resumes and finishes.
    result = subprocess.run(
        [sys.executable, str(PROGRAM)],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "LORAPIPE_OPT_ML": str(opt_ml.root), "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = [int(line.split()[0].split("=")[1]) for line in result.stdout.splitlines() if line.startswith("step=")]
    assert steps and steps[0] > 1, f"resumed run started again from step 1: {steps}"
    assert steps[-1] == 10
    assert len(list(opt_ml.model_dir.glob("*.safetensors"))) == 1
    assert (opt_ml.model_dir / "train_summary.json").is_file()
    assert not opt_ml.failure_file.exists()


def test_empty_channel_writes_the_failure_file(tmp_path, hyperparameters):
    opt_ml = _opt_ml(tmp_path / "opt-ml", None, hyperparameters)
    result = subprocess.run(
        [sys.executable, str(PROGRAM), "train"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LORAPIPE_OPT_ML": str(opt_ml.root)},
    )
    assert result.returncode != 0
    failure = opt_ml.failure_file.read_text(encoding="utf-8")
    assert len(failure) <= FAILURE_LIMIT
    assert "channel" in failure.splitlines()[0] and "empty" in failure.splitlines()[0]


def test_unknown_hyperparameter_fails_with_its_name_first(tmp_path, sample_dataset_dir, hyperparameters):
    opt_ml = _opt_ml(tmp_path / "opt-ml", sample_dataset_dir, {**hyperparameters, "max_train_stepz": "3"})
    result = subprocess.run(
        [sys.executable, str(PROGRAM), "train"],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "LORAPIPE_OPT_ML": str(opt_ml.root)},
    )
    assert result.returncode != 0
    failure = opt_ml.failure_file.read_text(encoding="utf-8")
    assert "max_train_stepz" in failure.splitlines()[0]
    assert len(failure) <= FAILURE_LIMIT
