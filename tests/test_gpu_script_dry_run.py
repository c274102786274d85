"""bench/gpu/run.sh --dry-run: every step of the GPU check on the CPU with the tiny preset, so the script that
waits for a GPU loan cannot rot. It proves the steps run; the figures it prints mean nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Compiling costs tens of seconds on a busy 2-core machine: the dry run compiles our generator (generate-compiled)
# and skips the two other compiled steps, which are the same functions with the same compile switch (the training
# one, Kohya's torch_compile, is also covered by test_train_compile.py).
SKIPPED = ("train-fast-compiled", "generate-diffusers-compiled")


def test_dry_run_runs_every_step(tmp_path):
    out = tmp_path / "gpu-out"
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    )
    proc = subprocess.run(
        [str(ROOT / "bench" / "gpu" / "run.sh"), "--dry-run", str(out), "--skip", *SKIPPED],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["dry_run"] and report["model"] == "random:tiny"
    steps = report["steps"]
    for name, result in steps.items():
        assert result["status"] == ("skipped" if name in SKIPPED else "ok"), (name, result)
    for name in ("train-fast", "train-checkpointing", "train-low-memory", "train-fp8", "train-diffusers"):
        assert steps[name]["it_per_s"] > 0, name
    for name in ("train-fast", "train-fp8"):  # lorapipe's own trainer wrote its Kohya file
        assert steps[name]["lora"].endswith(".safetensors"), name
    for name in ("generate", "generate-diffusers", "generate-compiled"):
        assert steps[name]["s_per_image"] > 0, name
    # What the CPU cannot run is said, not hidden.
    assert any("AdamW8bit -> AdamW" in note for note in steps["train-low-memory"]["notes"])
    assert any("inductor -> eager" in note for note in steps["generate-compiled"]["notes"])
    assert "train-fast it/s vs train-diffusers" in report["ratios"]
    assert "generate speed-up vs generate-diffusers" in report["ratios"]
    savings = json.loads((out / "memory_savings.json").read_text())
    assert savings["options"]["fp8_base_unet"]["bytes"] > 2 * 2**30  # the U-Net's 2.6 B weights, one byte each
    assert savings["measured_on"] is None  # no GPU, nothing measured
    assert (out / "gpu-check.log").read_text().count("== ") >= len(steps) - len(SKIPPED)
