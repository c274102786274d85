"""Benchmark: `dataset caption` images/s with each tiny captioner, batched vs one image per model call.

Run: python bench/caption.py [N]. Builds the tiny BLIP, Florence-2 and WD14 captioners, writes a dataset of N
generated 512x384 photos, and captions it through `caption_dataset` (decoding, model, atomic writes) once with
batch_size 1 (the baseline: one model call per image, as a naive loop does) and once with batch_size 8.
The tiny models are all per-call overhead, so this measures what batching saves in the pipeline around the model;
real checkpoints on a GPU gain from batching for the same reason (kernel launches, host-device copies).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lorapipe.dataset.caption import caption_dataset
from lorapipe.dataset.captioners import CAPTIONERS
from lorapipe.dataset.captioners.tiny import make_tiny_captioner

BATCH = 8


def make_dataset(root: Path, count: int) -> Path:
    dataset = root / "0001-dataset"
    subset = dataset / "10_sks dog"
    subset.mkdir(parents=True)
    (dataset / "kohya-sdxl-config.toml").write_text('caption_extension = ".txt"\nresolution = "1024,1024"\n')
    rng = np.random.default_rng(0)
    for n in range(count):
        Image.fromarray(rng.integers(0, 255, (384, 512, 3), dtype=np.uint8)).save(subset / f"{n:04d}.jpg", quality=90)
    return dataset


def timed(dataset: Path, kind: str, model: Path, batch_size: int) -> float:
    start = time.perf_counter()
    summary = caption_dataset(
        dataset, captioner=kind, model=str(model), overwrite=True, batch_size=batch_size, device="cpu"
    )
    seconds = time.perf_counter() - start
    assert summary.captioned == len(summary.written) and not summary.failed, summary.failed
    return summary.captioned / seconds


def main() -> None:
    import torch

    torch.set_num_threads(1)
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 48
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        dataset = make_dataset(root, count)
        for kind in CAPTIONERS:
            model = make_tiny_captioner(root / kind, kind)
            timed(dataset, kind, model, BATCH)  # warm-up: imports, first-call allocations
            single = timed(dataset, kind, model, 1)
            batched = timed(dataset, kind, model, BATCH)
            print(
                f"{kind:10} one at a time {single:7.1f} images/s   batch {BATCH} {batched:7.1f} images/s   "
                f"batched/single {batched / single:.1f}x"
            )


if __name__ == "__main__":
    main()
