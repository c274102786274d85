"""Training in several processes (one per GPU in real use; here two CPU processes over gloo on 127.0.0.1).

The check that matters: two processes with one batch each, gradients averaged, must train the same LoRA as one
process accumulating the same two batches (gradient_accumulation_steps = 2), since both average the same two
gradients. Also: only the main process writes, the metadata counts both processes, and a SIGTERM stops all of
them at one step with state saved, from which a two-process resume continues on the same loss curve.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from lorapipe.train.distributed import Processes, processes_from_env, shard_batches
from tests.train_fixtures import copy_dataset, one_thread  # noqa: F401  (autouse fixture)

STEPS = 6


def test_processes_come_from_the_launcher_environment():
    assert processes_from_env({}) == Processes(0, 1)
    assert processes_from_env({"RANK": "1", "WORLD_SIZE": "2"}) == Processes(1, 2)
    assert processes_from_env({"RANK": "0", "WORLD_SIZE": "2"}).is_main
    assert processes_from_env({"RANK": "5", "WORLD_SIZE": "2"}) == Processes(0, 1)  # nonsense: one process
    assert processes_from_env({"RANK": "x", "WORLD_SIZE": "2"}) == Processes(0, 1)


def test_each_process_gets_every_nth_batch_and_the_same_count():
    batches = list(range(7))
    shares = [shard_batches(batches, Processes(rank, 3)) for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4, 0], [2, 5, 1]]  # topped up from the epoch's start, as even_batches
    assert shard_batches(batches, Processes()) == batches


def _train(dataset: Path, model: Path, out: Path, *extra: str, processes: int = 1, wait: bool = True):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable,
        "-m",
        "lorapipe",
        "train",
        str(dataset),
        "--base-model",
        str(model),
        "--output-dir",
        str(out),
        "--no-progress",
        "--set",
        "seed=11",
        "--set",
        "max_grad_norm=0",
        "--processes",
        str(processes),
        *extra,
    ]
    log = open(out.parent / f"{out.name}.log", "w")
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    if not wait:
        return child
    code = child.wait(timeout=300)
    assert code == 0, (out.parent / f"{out.name}.log").read_text()[-3000:]
    return json.loads((out / "train_summary.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sample_dataset_dir, tiny_model_dir):
    """One process accumulating 2 batches, and 2 processes with 1 batch each, STEPS optimizer steps each."""
    root = tmp_path_factory.mktemp("distributed")
    dataset = copy_dataset(sample_dataset_dir, root)
    one = _train(
        dataset,
        tiny_model_dir,
        root / "one",
        "--set",
        f"max_train_steps={STEPS}",
        "--set",
        "gradient_accumulation_steps=2",
    )
    two = _train(dataset, tiny_model_dir, root / "two", "--set", f"max_train_steps={STEPS}", processes=2)
    return root, dataset, tiny_model_dir, one, two


def test_two_processes_train_what_one_process_accumulating_two_batches_trains(runs):
    root, _, _, one, two = runs
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-5)
    a = load_file(root / "one" / "dwjz_toy.safetensors")
    b = load_file(root / "two" / "dwjz_toy.safetensors")
    assert a.keys() == b.keys()
    trained = max(a[k].abs().max().item() for k in a if k.endswith("lora_up.weight"))  # up starts at zero
    gap = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert trained > 0 and gap < 0.02 * trained, (gap, trained)  # float summation order only


def test_only_the_main_process_writes_and_the_metadata_counts_both(runs):
    root, _, _, one, two = runs
    assert two["batches_per_epoch"] == -(-one["batches_per_epoch"] // 2)
    assert sorted(p.name for p in (root / "two").iterdir()) == ["dwjz_toy.safetensors", "train_summary.json"]
    with safe_open(root / "two" / "dwjz_toy.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["ss_total_batch_size"] == "2"
    assert int(meta["ss_num_batches_per_epoch"]) == two["batches_per_epoch"]


def test_a_sigterm_stops_every_process_at_one_step_and_resume_continues_the_curve(runs):
    root, dataset, model, one, _ = runs
    out = root / "stopped"
    child = _train(dataset, model, out, "--set", "max_train_steps=400", processes=2, wait=False)
    log = root / "stopped.log"
    deadline = time.monotonic() + 240
    while "step=1 " not in log.read_text() and time.monotonic() < deadline:
        assert child.poll() is None, log.read_text()[-3000:]
        time.sleep(0.1)
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=120)
    states = sorted(out.glob("dwjz_toy-step*-state"))
    assert len(states) == 1, log.read_text()[-3000:]
    stopped_at = json.loads((states[0] / "train_state.json").read_text())["current_step"]
    assert 1 <= stopped_at < STEPS, f"stopped at {stopped_at}; the machine was too slow to stop within {STEPS}"
    resumed = _train(
        dataset, model, root / "resumed", "--set", f"max_train_steps={STEPS}", "--resume", str(states[0]), processes=2
    )
    assert resumed["losses"] == pytest.approx(one["losses"][stopped_at:], abs=1e-5)
