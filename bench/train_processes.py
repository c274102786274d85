"""Training in several processes: images per second with N processes vs one, on the same data and steps.

Each process trains on its share of the batches (one per GPU in real use; here CPU processes with one thread
each, so N must not exceed the free cores). The N-process run does the same number of optimizer steps, each
averaging N batches, so its images/s should approach N x the single-process figure; the gap is the gradient
all-reduce and the launcher. Prints the scaling factor and the efficiency (factor / N). Nothing is asserted.

Run: `python bench/train_processes.py [--processes 2] [--steps 30] [--model DIR]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

from generate_common import lorapipe_train_cmd


def _train(dataset: Path, model: Path, out: Path, steps: int, processes: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    sets = ('sample_prompts=""', "sample_every_n_steps=0", f"max_train_steps={steps}", "seed=9")
    cmd = lorapipe_train_cmd(dataset, model, out, sets, "--processes", str(processes))
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out / "train_summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--model", help="SDXL diffusers folder (default: build the tiny model)")
    args = parser.parse_args()
    from lorapipe.dataset.sample import write_sample_dataset
    from lorapipe.sdxl.factory import make_pipeline_folder

    with tempfile.TemporaryDirectory(prefix="lorapipe-bench-processes-") as tmp:
        root = Path(tmp)
        model = Path(args.model) if args.model else make_pipeline_folder(root / "model")
        dataset = write_sample_dataset(root / "data")
        one = _train(dataset, model, root / "one", args.steps, 1)
        many = _train(dataset, model, root / "many", args.steps, args.processes)
    rate_one = one["steps_per_second_steady"] * 1  # one batch per step
    rate_many = many["steps_per_second_steady"] * args.processes  # N batches per step
    factor = rate_many / rate_one
    print(f"{args.steps} steps, batch size 1 per process, device {one['device']}")
    print(f"1 process: {rate_one:.2f} batches/s; {args.processes} processes: {rate_many:.2f} batches/s")
    print(f"scaling {factor:.2f}x, efficiency {factor / args.processes:.0%}")


if __name__ == "__main__":
    main()
