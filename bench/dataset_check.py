"""Benchmark: `dataset check` over 2,000 generated images vs decoding every image fully.

Run: python bench/dataset_check.py [N]. Prints images/s for the header-based check and for a full-decode pass
over the same files, and their ratio (measured in this script, same machine, same files).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lorapipe.dataset.check import check_dataset
from lorapipe.dataset.images import decode_image


def make_dataset(root: Path, count: int) -> Path:
    dataset = root / "0001-dataset"
    subset = dataset / "10_dwjz toy"
    subset.mkdir(parents=True)
    (dataset / "kohya-sdxl-config.toml").write_text(
        'resolution = "1024,1024"\nenable_bucket = true\nmin_bucket_reso = 256\nmax_bucket_reso = 2048\n'
        'caption_extension = ".txt"\nmax_train_epochs = 1\n'
    )
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (768, 1024, 3), np.uint8)
    for n in range(count):
        w, h = (1024, 768) if n % 2 else (768, 1024)
        tile = np.roll(base, n * 7, axis=1)[:h, :w] if n % 2 else np.roll(base, n * 7, axis=0).transpose(1, 0, 2)
        Image.fromarray(np.ascontiguousarray(tile[:h, :w])).save(subset / f"{n:05d}.jpg", quality=90)
        (subset / f"{n:05d}.txt").write_text(f"dwjz toy, photo number {n}, red, blue\n")
    return dataset


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        dataset = make_dataset(Path(folder), count)
        print(f"generated {count} JPEGs (1024x768 / 768x1024) in {time.perf_counter() - t0:.1f}s")

        t0 = time.perf_counter()
        report = check_dataset(dataset, count_tokens=False)
        header_s = time.perf_counter() - t0
        assert report.datasets[0].images == count, report.problems[:3]

        t0 = time.perf_counter()
        report_tokens = check_dataset(dataset, count_tokens=True)
        tokens_s = time.perf_counter() - t0
        assert report_tokens.datasets[0].images == count

        t0 = time.perf_counter()
        for path in sorted((dataset / "10_dwjz toy").glob("*.jpg")):
            decode_image(path)
        decode_s = time.perf_counter() - t0

    print(f"dataset check (headers, no tokens): {count / header_s:8.0f} images/s  ({header_s:.2f}s)")
    print(f"dataset check (headers + CLIP tokens): {count / tokens_s:5.0f} images/s  ({tokens_s:.2f}s)")
    print(f"full decode of every image (baseline): {count / decode_s:5.0f} images/s  ({decode_s:.2f}s)")
    print(f"ratio check/decode: {decode_s / header_s:.1f}x faster (with tokens: {decode_s / tokens_s:.1f}x)")


if __name__ == "__main__":
    main()
