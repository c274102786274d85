"""`lorapipe pipeline run` end to end on the local backend: the real trainer (tiny model, 2 steps) in a detached
worker, run records, content-hash caching, publishing, `runs list|show|logs|cancel`, and bad datasets."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lorapipe.pipeline.records import RunStore

# Two steps, with the sample dataset's preview prompts rendered after step 2 (the sample step publishes them).
TRAIN_SETTINGS = ("--set", "max_train_steps=2", "--set", "sample_every_n_steps=2")


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lorapipe", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run_id(stdout: str) -> str:
    first = stdout.splitlines()[0]
    assert first.startswith("run "), stdout
    return first.split()[1]


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def world(tmp_path_factory, sample_dataset_dir, tiny_model_dir):
    root = tmp_path_factory.mktemp("pipeline-local")
    dataset = shutil.copytree(sample_dataset_dir, root / "datasets" / "0001-dataset")
    return {
        "root": root,
        "home": root / "home",
        "dataset": dataset,
        "model": tiny_model_dir,
        "output": root / "published",
        "loras": root / "loras",
    }


def _common(world, output: Path | None = None, loras: Path | None = None, train=TRAIN_SETTINGS) -> list[str]:
    return [
        "--home",
        str(world["home"]),
        "--base-model",
        str(world["model"]),
        "--output",
        str(output or world["output"]),
        "--lora-dir",
        str(loras or world["loras"]),
        *train,
    ]


@pytest.fixture(scope="module")
def first_run(world):
    """Start a run, close the CLI mid-run (SIGHUP, like closing the terminal), reattach with `runs show --follow`."""
    command = [sys.executable, "-m", "lorapipe", "pipeline", "run", str(world["dataset"]), *_common(world)]
    cli = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert cli.stdout is not None
    run_id = _run_id(cli.stdout.readline())
    store = RunStore(world["home"] / "runs.sqlite")
    _wait_for(lambda: store.get(run_id).status == "running", 60, "the worker to start")
    cli.send_signal(signal.SIGHUP)
    cli.wait(timeout=30)
    follow = _cli("runs", "show", run_id, "--follow", "--home", str(world["home"]))
    return run_id, follow


def test_run_survives_the_cli_and_publishes_everything(world, first_run):
    run_id, follow = first_run
    assert follow.returncode == 0, follow.stderr
    assert "step=2 loss=" in follow.stdout, "progress streamed while reattached"
    record = RunStore(world["home"] / "runs.sqlite").get(run_id)
    assert record.status == "succeeded", record.error
    statuses = {step.name: step.status for step in record.steps}
    # No metric models here (offline, none cached): evaluate skips itself and the final file is published.
    assert statuses == {
        "validate": "succeeded",
        "train": "succeeded",
        "evaluate": "skipped",
        "sample": "succeeded",
        "publish": "succeeded",
    }

    published = world["output"] / run_id
    lora = published / "dwjz_toy.safetensors"
    assert lora.is_file() and (published / "train_summary.json").is_file()
    assert (published / "dwjz_toy.safetensors.sha256").read_text().split()[0] == _sha(lora)
    samples = sorted((published / "sample").glob("*.png"))
    assert len(samples) == 2, "both preview prompts rendered and published"
    assert (samples[0].parent / f"{samples[0].name}.sha256").is_file()
    manifest = json.loads((published / "publish.json").read_text())
    assert manifest["sha256"]["dwjz_toy.safetensors"] == _sha(lora)
    served = world["loras"] / "dwjz_toy.safetensors"
    assert _sha(served) == _sha(lora), "the server's LoRA folder holds the same bytes"
    assert (record.run_dir / "check.json").is_file()


def test_runs_list_show_and_logs(world, first_run):
    run_id, _ = first_run
    listing = _cli("runs", "list", "--home", str(world["home"]))
    assert run_id in listing.stdout and "succeeded" in listing.stdout
    shown = json.loads(_cli("runs", "show", run_id, "--json", "--home", str(world["home"])).stdout)
    assert shown["status"] == "succeeded" and shown["cache_key"]
    logs = _cli("runs", "logs", run_id, "--home", str(world["home"]))
    assert "validate:" in logs.stdout and "step=1 loss=" in logs.stdout and "publish:" in logs.stdout


def test_unchanged_content_elsewhere_is_not_trained_again(world, first_run):
    first_id, _ = first_run
    moved = shutil.copytree(world["dataset"], world["root"] / "moved" / "0001-dataset")
    result = _cli("pipeline", "run", str(moved), *_common(world))
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = _run_id(result.stdout)
    store = RunStore(world["home"] / "runs.sqlite")
    record = store.get(run_id)
    train = record.steps[1]
    assert train.status == "cached" and first_id in train.detail
    assert "step=1 loss=" not in result.stdout, "the trainer did not run"
    assert record.cache_key == store.get(first_id).cache_key
    assert _sha(world["output"] / run_id / "dwjz_toy.safetensors") == _sha(
        world["output"] / first_id / "dwjz_toy.safetensors"
    )


def test_changed_dataset_trains_again_cancel_stops_it_and_a_rerun_resumes(world, first_run):
    first_id, _ = first_run
    changed = shutil.copytree(world["dataset"], world["root"] / "changed" / "0001-dataset")
    caption = sorted((changed / "20_dwjz toy").glob("*.txt"))[0]
    caption.write_text(caption.read_text() + ", wearing a tiny hat")
    output, loras = world["root"] / "changed-out", world["root"] / "changed-loras"
    # enough steps that the cancel lands mid-training even on a fast machine
    settings = _common(world, output, loras, train=("--set", "max_train_steps=12"))
    started = _cli("pipeline", "run", str(changed), "--detach", *settings)
    assert started.returncode == 0, started.stderr
    run_id = _run_id(started.stdout)
    store = RunStore(world["home"] / "runs.sqlite")
    _wait_for(lambda: store.get(run_id).steps[1].status == "running", 60, "the train step to start")
    assert store.get(run_id).cache_key != store.get(first_id).cache_key, "a changed caption is new content"
    log = store.get(run_id).run_dir / "run.log"
    _wait_for(lambda: "step=1 loss=" in log.read_text(), 180, "the first training step")

    cancelled = _cli("runs", "cancel", run_id, "--home", str(world["home"]))
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    pid = store.get(run_id).pid
    _wait_for(
        lambda: not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(),
        150,
        "the worker to exit",
    )
    record = store.get(run_id)
    assert record.status == "cancelled" and record.steps[1].status == "cancelled"
    assert record.steps[3].status == "pending", "publish never ran"
    assert not output.exists() and not loras.exists(), "nothing published"
    assert list((record.run_dir / "train").glob("*/train_state.json")), "the trainer saved its state on SIGTERM"
    again = _cli("runs", "cancel", run_id, "--home", str(world["home"]))
    assert again.returncode != 0 and "already cancelled" in again.stderr

    resumed = _cli("pipeline", "run", str(changed), *settings)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-2000:]
    assert f"resuming from the state run {run_id} saved" in resumed.stdout
    steps = [int(line.split()[0].split("=")[1]) for line in resumed.stdout.splitlines() if line.startswith("step=")]
    assert steps[0] > 1 and steps[-1] == 12, steps
    assert (output / _run_id(resumed.stdout) / "dwjz_toy.safetensors").is_file()


def test_dataset_that_fails_the_check_fails_the_run_before_training(world, tmp_path):
    bad = tmp_path / "0002-dataset"
    (bad / "dwjz toy").mkdir(parents=True)  # not <repeats>_<name>: Kohya would find zero images
    shutil.copy(world["dataset"] / "kohya-sdxl-config.toml", bad)
    for image in sorted((world["dataset"] / "20_dwjz toy").glob("*.png"))[:2]:
        shutil.copy(image, bad / "dwjz toy")
    output, loras = tmp_path / "out", tmp_path / "loras"
    result = _cli("pipeline", "run", str(bad), *_common(world, output, loras), timeout=120)
    assert result.returncode == 1
    run_id = _run_id(result.stdout)
    record = RunStore(world["home"] / "runs.sqlite").get(run_id)
    assert record.status == "failed" and "0002-dataset" in record.error
    assert [s.status for s in record.steps] == ["failed", "pending", "pending", "pending", "pending"]
    assert record.error in result.stderr
    assert not output.exists() and not loras.exists()


def test_missing_dataset_folder_is_a_failed_run_with_reason(world, tmp_path):
    result = _cli("pipeline", "run", str(tmp_path / "nope"), "--foreground", *_common(world, tmp_path / "o"))
    assert result.returncode == 1
    assert "no such dataset folder" in result.stderr
