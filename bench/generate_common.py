"""Shared setup for the generate/server benchmarks: a tiny SDXL folder and a Kohya LoRA in a temp dir."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
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
