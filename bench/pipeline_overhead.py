"""Pipeline overhead: `lorapipe pipeline run` (validate, hash, worker, publish) against `lorapipe train` alone.

Both run the same trainer command on the sample dataset and tiny model; runs alternate so load on the machine hits
both alike. Prints the median wall times and the ratio (target: overhead <= 10 %, i.e. ratio <= 1.10), plus the
pipeline's own non-training time from its step records.

    python bench/pipeline_overhead.py [--steps 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _timed(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from lorapipe.dataset.sample import write_sample_dataset
    from lorapipe.pipeline.records import RunStore
    from lorapipe.sdxl.factory import make_pipeline_folder

    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    model = make_pipeline_folder(work / "tiny", preset="tiny", seed=0)
    dataset = write_sample_dataset(work / "datasets")
    settings = ["--base-model", str(model), "--set", f"max_train_steps={args.steps}"]
    lorapipe = [sys.executable, "-m", "lorapipe"]
    home = work / "home"

    direct, pipeline, pipeline_overhead = [], [], []
    for index in range(args.repeats):

        def run_direct(index: int = index) -> None:
            direct.append(
                _timed(
                    [
                        *lorapipe,
                        "train",
                        str(dataset),
                        "--output-dir",
                        str(work / f"direct-{index}"),
                        "--no-progress",
                        *settings,
                    ]
                )
            )

        def run_pipeline() -> None:
            pipeline.append(
                _timed(
                    [
                        *lorapipe,
                        "pipeline",
                        "run",
                        str(dataset),
                        "--home",
                        str(home),
                        "--no-cache",
                        "--output",
                        str(work / "published"),
                        "--lora-dir",
                        str(work / "loras"),
                        *settings,
                    ]
                )
            )
            store = RunStore(home / "runs.sqlite")
            record = store.get(store.list_runs(limit=1)[0].id)
            train = next(step for step in record.steps if step.name == "train")
            pipeline_overhead.append(pipeline[-1] - (train.finished - train.started))

        # Alternate the order so a machine that speeds up or slows down during the bench favours neither side.
        for run in (run_direct, run_pipeline) if index % 2 == 0 else (run_pipeline, run_direct):
            run()
        print(
            f"repeat {index + 1}: train alone {direct[-1]:.2f}s, pipeline run {pipeline[-1]:.2f}s "
            f"(non-training {pipeline_overhead[-1]:.2f}s)",
            flush=True,
        )

    print(f"\n{'':32}{'min':>9}{'median':>9}")
    print(f"{'trainer alone':32}{min(direct):9.2f}{statistics.median(direct):9.2f}  s")
    print(f"{'pipeline run':32}{min(pipeline):9.2f}{statistics.median(pipeline):9.2f}  s")
    print(
        f"{'ratio pipeline/trainer':32}{min(pipeline) / min(direct):9.3f}"
        f"{statistics.median(pipeline) / statistics.median(direct):9.3f}  (target <= 1.10)"
    )
    overhead_s = statistics.median(pipeline_overhead)
    print(
        f"non-training time in the pipeline (median): {overhead_s:.2f} s = "
        f"{overhead_s / min(direct):.1%} of the fastest direct training run"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
