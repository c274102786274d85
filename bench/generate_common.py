"""Shared setup for the generate/server/train benchmarks: a tiny SDXL folder and a Kohya LoRA in a temp dir, timing
helpers, and one child process measured on its own (wall time, peak RSS)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # one LoRA-writing helper for both


def tiny_setup(root: Path | None = None) -> tuple[Path, Path]:
    """(model_dir, lora_dir) with the tiny preset and one LoRA named `toy`."""
    from generate_fixtures import write_kohya_lora

    from lorapipe.sdxl.factory import make_pipeline_folder

    root = Path(root or tempfile.mkdtemp(prefix="lorapipe-bench-"))
    model_dir = root / "tiny-sdxl"
    if not (model_dir / "model_index.json").exists():
        make_pipeline_folder(model_dir, preset="tiny", seed=0)
    lora_dir = root / "loras"
    if not (lora_dir / "toy.safetensors").exists():
        write_kohya_lora(lora_dir / "toy.safetensors", model_dir, seed=1)
    return model_dir, lora_dir


def tiny_generator(threads: int):
    """A CPU fp32 Generator over `tiny_setup()`, with torch limited to `threads` and loading chatter off."""
    import torch

    from lorapipe.generate.generator import Generator
    from lorapipe.generate.quiet import quiet_model_loading

    torch.set_num_threads(threads)
    quiet_model_loading()
    model_dir, lora_dir = tiny_setup()
    return Generator.load(str(model_dir), lora_dir=lora_dir, device="cpu", dtype="fp32")


def serving(generator, **settings):
    """Context manager: the A1111 app around `generator` on 127.0.0.1 in a uvicorn thread (yields `.url`)."""
    from generate_fixtures import RunningServer

    from lorapipe.server.app import create_app
    from lorapipe.server.settings import ServerSettings

    return RunningServer(create_app(ServerSettings(**settings), generator=generator))


def median_time(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds per callable, measured alternately so machine noise hits all of them alike."""
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def balanced_rounds(fns: dict, rounds: int, warmup: int = 2) -> list[dict[str, float]]:
    """Seconds per callable in each of `rounds` rounds, every round running each callable once back to back.

    The order cycles through all permutations, so each callable runs before and after each other one equally
    often and no position's advantage (a warmer cache, a quieter moment) falls on one side; `warmup` rounds run
    first and are discarded. Compare within a round (`paired_ratios`): drift on a shared machine hits both sides."""
    import itertools

    orders = itertools.cycle(itertools.permutations(fns))
    kept = []
    for index in range(warmup + rounds):
        times = {}
        for name in next(orders):
            start = time.perf_counter()
            fns[name]()
            times[name] = time.perf_counter() - start
        if index >= warmup:
            kept.append(times)
    return kept


@dataclass(frozen=True)
class RatioSummary:
    """Per-round ratios (candidate / baseline): robust centre and spread, and the mean with a bootstrap 95 % CI."""

    median: float
    q1: float
    q3: float
    mean: float
    ci_low: float
    ci_high: float
    rounds: int

    def describe(self) -> str:
        return (
            f"median {self.median:.4f} (IQR {self.q1:.4f}-{self.q3:.4f}), mean {self.mean:.4f} "
            f"(95% CI {self.ci_low:.4f}-{self.ci_high:.4f}), {self.rounds} rounds"
        )


def paired_ratios(rounds: list[dict[str, float]], candidate: str, baseline: str) -> RatioSummary:
    import random

    ratios = [r[candidate] / r[baseline] for r in rounds]
    q1, median, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    draw = random.Random(0)  # a fixed seed: the same samples give the same interval
    means = sorted(statistics.fmean(draw.choices(ratios, k=len(ratios))) for _ in range(2000))
    return RatioSummary(median, q1, q3, statistics.fmean(ratios), means[49], means[1949], len(ratios))


def lorapipe_train_cmd(dataset: Path, model: Path, out: Path, sets, *args: str) -> list[str]:
    """`python -m lorapipe train DATASET --base-model MODEL --output-dir OUT --no-progress [ARGS] --set ...` for
    each `KEY=VALUE` in `sets`."""
    cmd = [sys.executable, "-m", "lorapipe", "train", str(dataset), "--base-model", str(model)]
    cmd += ["--output-dir", str(out), "--no-progress", *args]
    for item in sets:
        cmd += ["--set", item]
    return cmd


def measure_process(cmd: list[str], env: dict, log: Path) -> tuple[float, int]:
    """Run `cmd` to the end with stdout/stderr in `log`; (wall seconds from launch to exit, peak RSS bytes of that
    process alone -- os.wait4, not the largest of all children so far). Exits naming the log when it fails."""
    with open(log, "w") as out:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed with exit code {proc.returncode}; end of {log}:\n{tail}")
    return wall, usage.ru_maxrss * 1024


def child_env(cache: Path, *first_on_path: Path, **extra: str) -> dict:
    """This environment for a timed child process: `first_on_path` and this checkout's src/ ahead of PYTHONPATH,
    one torch thread, the hub offline, plus `extra`. The child compiles each source once into `cache` and reuses
    it, as an installed package's .pyc files are (this machine sets PYTHONDONTWRITEBYTECODE, which would recompile
    everything per process)."""
    src = Path(__file__).resolve().parent.parent / "src"
    path = os.pathsep.join(p for p in (*map(str, first_on_path), str(src), os.environ.get("PYTHONPATH", "")) if p)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPATH=path, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPYCACHEPREFIX=str(cache), **extra)
    return env
