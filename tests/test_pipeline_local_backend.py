"""Local backend command lines: `lorapipe train` in a child, `--processes N` when several GPUs are visible
(tests/test_train_distributed.py runs such a multi-process training for real, on CPU)."""

from __future__ import annotations

import sys
from pathlib import Path

from lorapipe.pipeline.backend import TrainJob
from lorapipe.pipeline.local_backend import trainer_command, visible_gpu_count


def _job(tmp_path: Path, config: Path | None = None) -> TrainJob:
    return TrainJob(
        "run",
        tmp_path / "0001-dataset",
        str(tmp_path / "0001-dataset"),
        tmp_path / "train",
        "/models/tiny",
        config,
        ("max_train_steps=2", "seed=1"),
    )


def test_single_device_runs_the_trainer_cli(tmp_path):
    command = trainer_command(_job(tmp_path, tmp_path / "c.toml"), gpus=1)
    assert command[:4] == [sys.executable, "-m", "lorapipe", "train"]
    assert command[4] == str(tmp_path / "0001-dataset")
    joined = " ".join(command)
    assert f"--output-dir {tmp_path / 'train'}" in joined and "--base-model /models/tiny" in joined
    assert f"--config {tmp_path / 'c.toml'}" in joined
    assert command[-4:] == ["--set", "max_train_steps=2", "--set", "seed=1"]


def test_several_gpus_train_one_process_per_gpu(tmp_path):
    command = trainer_command(_job(tmp_path), gpus=4)
    assert command[:4] == [sys.executable, "-m", "lorapipe", "train"]
    assert command[command.index("--processes") + 1] == "4"
    assert "--config" not in command


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,3")
    assert visible_gpu_count() == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpu_count() == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpu_count() == 0
