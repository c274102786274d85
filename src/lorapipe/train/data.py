"""Batches for the loop: the dataset layer's epoch order and samples, loaded one batch ahead on a thread.

Each sample's randomness (flip, caption dropout) comes from `random.Random` seeded by (seed, epoch, batch, slot),
so a batch is a pure function of its position: resuming mid-epoch reproduces exactly the batches that follow.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lorapipe.dataset.batches import epoch_batches, load_sample
from lorapipe.hashes import sha256_file
from lorapipe.train.distributed import Processes, shard_batches


@dataclass(frozen=True, eq=False)
class TrainBatch:
    """One batch as the step needs it (numpy/python; tensors are made by the step)."""

    epoch: int
    index: int  # batch index inside the epoch
    pixels: list[np.ndarray]
    captions: list[str]
    time_ids: list[list[int]]  # original (h, w), crop (top, left), target (h, w)
    loss_weights: list[float]
    paths: list[Path]
    original_sizes_wh: list[tuple[int, int]]
    alpha_masks: list[np.ndarray | None] | None = None  # None: no sample of the batch carries a mask


def dataset_hash(scan) -> str:
    """Identity of the training data: image bytes, captions, repeats and subset options (for resume checks)."""
    digest = hashlib.sha256()
    for item in sorted(scan.items, key=lambda i: (str(i.subset.image_dir.name), i.path.name)):
        digest.update(
            f"{item.subset.image_dir.name}/{item.path.name}|{item.repeats}|{item.caption}|"
            f"{item.bucket}|{item.subset.is_reg}\n".encode()
        )
        digest.update(sha256_file(item.path).encode())
    return digest.hexdigest()


def sample_rng(seed: int, epoch: int, batch_index: int, slot: int) -> random.Random:
    return random.Random(f"{seed}:{epoch}:{batch_index}:{slot}")


def load_batch(
    items, blueprint, *, seed: int, epoch: int, index: int, step: int | None = None, total_steps: int | None = None
) -> TrainBatch:
    samples = [
        load_sample(item, blueprint, epoch, sample_rng(seed, epoch, index, slot), step=step, total_steps=total_steps)
        for slot, item in enumerate(items)
    ]
    return TrainBatch(
        epoch=epoch,
        index=index,
        pixels=[s.pixels for s in samples],
        captions=[s.caption for s in samples],
        time_ids=[[*s.original_size, *s.crop_top_left, *s.target_size] for s in samples],
        loss_weights=[float(s.loss_weight) for s in samples],
        paths=[Path(s.path) for s in samples],
        original_sizes_wh=[(int(s.original_size[1]), int(s.original_size[0])) for s in samples],
        alpha_masks=[s.alpha_mask for s in samples] if any(s.alpha_mask is not None for s in samples) else None,
    )


def epoch_groups(
    scan, blueprint, *, epoch: int, seed: int, accumulation: int, processes: Processes = Processes()
) -> list[list[tuple[int, list]]]:
    """This process's share of the epoch's batches cut into optimizer-step groups of `accumulation` (the last
    group may be shorter, as sd-scripts counts ceil(batches / processes / accumulation) updates per epoch)."""
    batches = shard_batches(list(enumerate(epoch_batches(scan, blueprint, epoch, seed))), processes)
    return [batches[i : i + accumulation] for i in range(0, len(batches), accumulation)]


def prefetched(
    groups, blueprint, *, seed: int, epoch: int, first_step: int | None = None, total_steps: int | None = None
) -> Iterator[list[TrainBatch]]:
    """Yield each group's loaded batches while the next group loads on a worker thread (PIL releases the GIL).

    Group k is trained at optimizer step `first_step + k` (steps done before it), which token warm-up reads."""

    def load(position, group):
        step = None if first_step is None else first_step + position
        return [
            load_batch(items, blueprint, seed=seed, epoch=epoch, index=index, step=step, total_steps=total_steps)
            for index, items in group
        ]

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorapipe-data") as pool:
        pending = pool.submit(load, 0, groups[0]) if groups else None
        for position, next_group in enumerate(list(groups[1:]) + [None], start=1):
            current = pending.result()
            pending = pool.submit(load, position, next_group) if next_group is not None else None
            yield current
