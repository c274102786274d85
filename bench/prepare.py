"""Benchmark: `dataset prepare` on 300 phone-size photos (12 MP JPEGs, 4032x3024), time and peak memory.

Run: python bench/prepare.py [N]. Generates N 12 MP JPEGs (a tenth of them with an EXIF rotation, as phones
write portrait shots), then in separate processes: copies the folder with shutil (the floor: what any prepare
must at least do), and runs `prepare_dataset` on N/10 and on N photos. Prints seconds, photos/s, the ratio to the
plain copy, and each run's peak resident memory; memory must not grow with the number of photos.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (4032, 3024)  # 12 MP, the usual phone sensor
_EXIF_ORIENTATION = 0x0112

_CHILD = """
import json, shutil, sys, time
from pathlib import Path
photos, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
start = time.perf_counter()
if mode == "copy":
    shutil.copytree(photos, out)
    kept = len(list(out.iterdir()))
else:
    from lorapipe.dataset.prepare import prepare_dataset
    kept = len(prepare_dataset(photos, out, trigger="sks", class_name="dog").kept)
seconds = time.perf_counter() - start
# VmHWM: this process's own peak resident memory (ru_maxrss would include the parent's peak from before exec).
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "kept": kept, "peak_mib": peak_kib / 1024}))
"""


def make_photos(folder: Path, count: int) -> None:
    """Smooth gradients with mild noise (JPEG sizes like real photos, 2-4 MB), shifted per photo so every file
    differs; one base image is computed once, so generating 300 takes minutes, not tens of minutes."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    w, h = SIZE
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack(
        [127 + 100 * np.sin(xs / 700), 127 + 100 * np.cos(ys / 500), 127 + 100 * np.sin((xs + ys) / 900)], axis=-1
    )
    base = np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    del ys, xs
    for n in range(count):
        image = Image.fromarray(np.roll(base, 37 * n + 1, axis=1))
        exif = image.getexif()
        if n % 10 == 0:
            exif[_EXIF_ORIENTATION] = 6
        image.save(folder / f"IMG_{n:04d}.jpg", quality=90, exif=exif)


def run(photos: Path, out: Path, mode: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(photos), str(out), mode], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    small = max(1, count // 10)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        start = time.perf_counter()
        make_photos(root / "photos", count)
        make_photos(root / "few", small)
        megabytes = sum(p.stat().st_size for p in (root / "photos").iterdir()) / 2**20
        print(
            f"generated {count} + {small} JPEGs ({SIZE[0]}x{SIZE[1]}, {megabytes / count:.1f} MB each) in "
            f"{time.perf_counter() - start:.0f}s"
        )
        copy = run(root / "photos", root / "copy", "copy")
        few = run(root / "few", root / "0001-dataset", "prepare")
        full = run(root / "photos", root / "0002-dataset", "prepare")
    assert full["kept"] == count and few["kept"] == small, (full, few)
    print(
        f"shutil.copytree ({count} photos):  {copy['seconds']:6.1f}s  {count / copy['seconds']:6.1f} photos/s  "
        f"peak {copy['peak_mib']:.0f} MiB"
    )
    print(
        f"dataset prepare ({small} photos):   {few['seconds']:6.1f}s  {small / few['seconds']:6.1f} photos/s  "
        f"peak {few['peak_mib']:.0f} MiB"
    )
    print(
        f"dataset prepare ({count} photos):  {full['seconds']:6.1f}s  {count / full['seconds']:6.1f} photos/s  "
        f"peak {full['peak_mib']:.0f} MiB"
    )
    print(
        f"prepare / plain copy time: {full['seconds'] / copy['seconds']:.1f}x; "
        f"peak memory {count} vs {small} photos: {full['peak_mib'] / few['peak_mib']:.2f}x (1.0 = flat)"
    )


if __name__ == "__main__":
    main()
