"""Learning is real: after the sample config's short run, the LoRA denoises held-out photos of the subject better
than the base model (same images, timesteps and noise; only the weights differ).

The held-out measurement is a benchmark's (bench/heldout.py), not the library's, so the test runs
`bench/train_learning.py` (the tiny model, the sample dataset: 10 images trained, 2 held out) and reads its figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_lora_lowers_heldout_denoising_loss(tiny_model_dir):
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    )
    command = [sys.executable, str(ROOT / "bench" / "train_learning.py"), "--steps", "32"]
    proc = subprocess.run(
        [*command, "--base-model", str(tiny_model_dir)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "(2 unseen images x 4 timesteps, 32 steps trained)" in proc.stdout, proc.stdout
    found = re.search(r"base model ([0-9.]+)\s+with LoRA ([0-9.]+)", proc.stdout)
    assert found, proc.stdout
    base, with_lora = float(found.group(1)), float(found.group(2))
    assert with_lora < base * 0.995, (base, with_lora)
