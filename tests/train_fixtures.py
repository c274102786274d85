"""Helpers for the trainer tests: small writable copies of the sample dataset (the shared fixture is read-only)."""

from __future__ import annotations

import shutil
from pathlib import Path

SUBSET = "20_dwjz toy"


def copy_dataset(sample_dataset_dir: Path, dest: Path, *, keep: int | None = None, repeats: int | None = None,
                 skip: int = 0) -> Path:
    """Copy `0001-dataset` to dest/0001-dataset; optionally keep only images [skip, skip+keep) and rename the
    subset folder to `<repeats>_dwjz toy`."""
    target = dest / "0001-dataset"
    shutil.copytree(sample_dataset_dir, target)
    subset = target / SUBSET
    images = sorted(subset.glob("*.png"))
    chosen = images[skip : skip + keep] if keep is not None else images[skip:]
    for image in images:
        if image not in chosen:
            image.unlink()
            image.with_suffix(".txt").unlink()
    if repeats is not None:
        subset.rename(target / f"{repeats}_dwjz toy")
    return target


def removed_images(sample_dataset_dir: Path, *, keep: int, skip: int = 0) -> list[Path]:
    """The sample images left out by copy_dataset(keep=..., skip=...)."""
    images = sorted((sample_dataset_dir / SUBSET).glob("*.png"))
    return images[:skip] + images[skip + keep :]
