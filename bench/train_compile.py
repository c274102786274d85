"""torch.compile in the trainer (Kohya's `torch_compile = true` + `dynamo_backend`): same losses, and what it buys.

Trains the same run twice in this script's child processes, plain and with the UNet compiled, and prints:
- whether the per-step losses agree (compilation must not change the maths beyond float reordering),
- steady steps/s (after warm-up) compiled / plain, and the one-off compile cost (first-steps time).

On the CPU with the tiny model compilation costs more than it saves (the model is too small for fused kernels
to matter); the figure that counts comes from a GPU: `python bench/train_compile.py --backend inductor` there.
Run: `python bench/train_compile.py [--backend eager|aot_eager|inductor] [--steps 8] [--model DIR]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

from generate_common import lorapipe_train_cmd


def _train(dataset: Path, model: Path, out: Path, steps: int, *sets: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
    # One bucket (fixed 64x64, no buckets) so the compiled graph is traced once, as on a real bucketed run after
    # each bucket's first step.
    settings = (
        'sample_prompts=""',
        "sample_every_n_steps=0",
        f"max_train_steps={steps}",
        "seed=5",
        "enable_bucket=false",
        *sets,
    )
    cmd = lorapipe_train_cmd(dataset, model, out, settings)
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out / "train_summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="eager", help="dynamo_backend (default eager: cheapest to trace)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--model", help="SDXL diffusers folder (default: build the tiny model)")
    args = parser.parse_args()
    from lorapipe.dataset.sample import write_sample_dataset
    from lorapipe.sdxl.factory import make_pipeline_folder

    with tempfile.TemporaryDirectory(prefix="lorapipe-bench-compile-") as tmp:
        root = Path(tmp)
        model = Path(args.model) if args.model else make_pipeline_folder(root / "model")
        dataset = write_sample_dataset(root / "data")
        plain = _train(dataset, model, root / "plain", args.steps)
        compiled = _train(
            dataset, model, root / "compiled", args.steps, "torch_compile=true", f"dynamo_backend={args.backend}"
        )
    gap = max(abs(a - b) for a, b in zip(plain["losses"], compiled["losses"]))
    print(f"backend {args.backend}, {args.steps} steps, device {plain['device']}")
    print(f"largest per-step loss difference: {gap:.2e} ({'same' if gap < 1e-3 else 'DIFFERENT'} losses)")
    p, c = plain["steps_per_second_steady"], compiled["steps_per_second_steady"]
    if p and c:
        print(f"steady steps/s: plain {p:.3f}, compiled {c:.3f} -> speed {c / p:.3f}x")
    print(
        f"whole run: plain {plain['seconds_training']:.1f} s, compiled {compiled['seconds_training']:.1f} s "
        f"(compile cost about {compiled['seconds_training'] - plain['seconds_training']:.1f} s)"
    )


if __name__ == "__main__":
    main()
