"""Helpers for the trainer tests: one torch thread, and small writable copies of the sample dataset (the shared
fixture is read-only)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

SUBSET = "20_dwjz toy"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest single-threaded on a shared 2-core machine; autouse in each module importing it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def copy_dataset(
    sample_dataset_dir: Path, dest: Path, *, keep: int | None = None, repeats: int | None = None, skip: int = 0
) -> Path:
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
