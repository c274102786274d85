"""Find every trainable image of a blueprint, with its caption, size and bucket, and every problem on the way.

Headers only by default (`probe_image`); `deep=True` also decodes each image. The result is the single source of
truth for `dataset check`, the step count and the trainer's batches.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from lorapipe.dataset.blueprint import DatasetBlueprint, SubsetSpec
from lorapipe.dataset.buckets import BucketPlanner
from lorapipe.dataset.captions import KNOWN_CAPTION_EXTENSIONS, other_caption_extensions, read_caption
from lorapipe.dataset.images import decode_image, extension_matches, probe_image
from lorapipe.dataset.layout import is_image_name
from lorapipe.dataset.problems import Problem, error, warning
from lorapipe.errors import DatasetError
from lorapipe.hashes import sha256_file

# Files that belong beside images without being images: captions, latent caches, configs, and the `.sha256`
# sidecars the store writes beside every object it uploads (a dataset uploaded for SageMaker has one per file).
_QUIET_EXTENSIONS = frozenset(KNOWN_CAPTION_EXTENSIONS) | {".npz", ".json", ".toml", ".md", ".sha256"}


@dataclass(frozen=True)
class ImageItem:
    """One trainable image. `repeats` is per epoch, after sd-scripts' regularization balancing (may be 0)."""

    path: Path
    subset: SubsetSpec
    caption: str
    caption_path: Path | None
    original_size: tuple[int, int]  # (w, h) after EXIF orientation
    bucket: tuple[int, int]  # (w, h)
    resized_size: tuple[int, int]  # (w, h) before the trim to the bucket
    repeats: int
    sha256: str | None = None


@dataclass(frozen=True)
class DatasetScan:
    blueprint: DatasetBlueprint
    items: tuple[ImageItem, ...]
    problems: tuple[Problem, ...]
    validation_items: tuple[ImageItem, ...] = ()  # held out by validation_split (never trained)

    @property
    def has_errors(self) -> bool:
        return any(p.severity == "error" for p in self.problems)


def _list_subset(subset: SubsetSpec, problems: list[Problem]) -> list[Path]:
    images: list[Path] = []
    if not subset.image_dir.is_dir():
        problems.append(error(subset.image_dir, "subset folder does not exist"))
        return images
    for child in sorted(subset.image_dir.iterdir(), key=lambda p: p.name):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            problems.append(
                warning(
                    child,
                    "sub-folders of a subset are not scanned; move its images up or make "
                    "it a <repeats>_<name> folder of its own",
                )
            )
        elif is_image_name(child.name):
            images.append(child)
        elif child.suffix.lower() not in _QUIET_EXTENSIONS and child.suffix.lower() != subset.caption_extension:
            problems.append(warning(child, "not a training image (png, jpg, jpeg, webp, bmp); ignored"))
    stems: dict[str, Path] = {}
    for image in images:
        if image.stem in stems:
            problems.append(warning(image, f"shares its caption file name with {stems[image.stem].name}; rename one"))
        stems.setdefault(image.stem, image)
    if not images:
        problems.append(error(subset.image_dir, "no images in this subset folder (png, jpg, jpeg, webp, bmp)"))
    return images


def _caption_for(image: Path, subset: SubsetSpec, problems: list[Problem], misplaced: dict[str, list[Path]]):
    try:
        found = read_caption(image, subset.caption_extension, enable_wildcard=subset.enable_wildcard)
    except DatasetError as exc:
        caption_file, _, reason = str(exc).partition(": ")
        problems.append(error(caption_file, reason))
        return subset.class_tokens or "", None
    if found.text is not None:
        if found.line_count > 1 and not subset.enable_wildcard:
            problems.append(warning(found.path, f"caption has {found.line_count} lines; only the first is used"))
        return found.text, found.path
    others = other_caption_extensions(image, subset.caption_extension)
    for extension in others:
        misplaced[extension].append(image.with_name(image.stem + extension))
    if not others:
        if subset.class_tokens:
            problems.append(
                warning(
                    image,
                    f"no {subset.caption_extension} caption; the folder name "
                    f"'{subset.class_tokens}' is used as its caption",
                )
            )
        else:
            problems.append(
                warning(
                    image, f"no {subset.caption_extension} caption and no class tokens; trained with an empty caption"
                )
            )
    return subset.class_tokens or "", None


def _scan_image(
    image: Path,
    subset: SubsetSpec,
    planner: BucketPlanner,
    blueprint: DatasetBlueprint,
    problems: list[Problem],
    deep: bool,
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None:
    try:
        header = probe_image(image)
        if deep:
            decode_image(image)
    except DatasetError as exc:
        problems.append(error(image, str(exc).split(": ", 1)[-1]))
        return None
    if header.truncated:
        problems.append(error(image, f"{header.format} file is truncated (incomplete download or copy); replace it"))
        return None
    if not extension_matches(image, header):
        problems.append(
            warning(
                image,
                f"is a {header.format} file named {image.suffix}; lorapipe reads it by "
                f"content, but other tools may not — rename it",
            )
        )
    if header.animated:
        problems.append(warning(image, "animated image; only the first frame is trained"))
    if header.orientation != 1:
        problems.append(
            warning(
                image,
                f"EXIF orientation {header.orientation} applied: trained as "
                f"{header.size[0]}x{header.size[1]} (sd-scripts ignores EXIF and trains "
                "it rotated)",
            )
        )
    width, height = header.size
    choice = planner.select(width, height)
    if choice.bucket[0] < 1 or choice.bucket[1] < 1:
        problems.append(
            error(
                image,
                f"{width}x{height} is smaller than bucket_reso_steps "
                f"{blueprint.bucket_reso_steps} with bucket_no_upscale; remove or enlarge it",
            )
        )
        return None
    if blueprint.enable_bucket and min(width, height) < blueprint.min_bucket_reso:
        fate = "cropped to a tiny bucket" if blueprint.bucket_no_upscale else "upscaled"
        problems.append(
            warning(
                image,
                f"{width}x{height} is below min_bucket_reso {blueprint.min_bucket_reso}; "
                f"it is {fate}"
                f" ({choice.bucket[0]}x{choice.bucket[1]})",
            )
        )
    return header.size, choice.bucket, choice.resized


def _balance_reg_repeats(items: list[ImageItem], problems: list[Problem]) -> list[ImageItem]:
    """sd-scripts' DreamBoothDataset: reg samples per epoch are filled up to the number of train samples."""
    train_samples = sum(i.repeats for i in items if not i.subset.is_reg)
    reg_indices = [n for n, i in enumerate(items) if i.subset.is_reg]
    if not reg_indices:
        return items
    repeats = {n: 0 for n in reg_indices}
    registered: set[int] = set()
    count, first_loop = 0, True
    while count < train_samples:
        for n in reg_indices:
            if first_loop:
                repeats[n] = items[n].repeats
                registered.add(n)
                count += items[n].repeats
            else:
                repeats[n] += 1
                count += 1
            if count >= train_samples:
                break
        first_loop = False
    unused = [items[n].path for n in reg_indices if n not in registered]
    if unused:
        problems.append(
            warning(
                items[reg_indices[0]].subset.image_dir,
                f"{len(unused)} regularization image(s) are not used: reg samples are capped at the "
                f"{train_samples} training samples per epoch",
                unused,
            )
        )
    return [replace(i, repeats=repeats[n]) if n in repeats else i for n, i in enumerate(items)]


def _flag_duplicates(items: list[ImageItem], problems: list[Problem], hash_all: bool) -> list[ImageItem]:
    by_size: dict[int, list[int]] = defaultdict(list)
    for n, item in enumerate(items):
        by_size[item.path.stat().st_size].append(n)
    hashed = list(items)
    first_with: dict[str, Path] = {}
    for indices in by_size.values():
        if len(indices) < 2 and not hash_all:
            continue
        for n in indices:
            digest = sha256_file(items[n].path)
            hashed[n] = replace(items[n], sha256=digest)
            if digest in first_with:
                problems.append(
                    warning(
                        items[n].path,
                        f"byte-identical to {first_with[digest]}; it is trained twice as often — delete one copy",
                    )
                )
            else:
                first_with[digest] = items[n].path
    return hashed


def scan_dataset(
    blueprint: DatasetBlueprint, *, deep: bool = False, hash_all: bool = False, training_seed: int | None = None
) -> DatasetScan:
    """Scan every subset of `blueprint`. Never raises for bad files: each one becomes a Problem.

    With validation_split, each training subset's images are shuffled with validation_seed (else
    `training_seed`, as sd-scripts) and the last fraction is held out as `validation_items`. Several [[datasets]]
    tables are scanned one by one (own buckets, reg balancing and split) and their items joined."""
    if blueprint.more_datasets:
        parts = [
            scan_dataset(table, deep=deep, hash_all=hash_all, training_seed=training_seed)
            for table in blueprint.datasets()
        ]
        return DatasetScan(
            blueprint,
            tuple(i for p in parts for i in p.items),
            tuple(blueprint.notes) + tuple(x for p in parts for x in p.problems),
            tuple(i for p in parts for i in p.validation_items),
        )
    problems: list[Problem] = list(blueprint.notes)
    planner = BucketPlanner(blueprint)
    items: list[ImageItem] = []
    for subset in blueprint.subsets:
        misplaced: dict[str, list[Path]] = defaultdict(list)
        for image in _list_subset(subset, problems):
            sizes = _scan_image(image, subset, planner, blueprint, problems, deep)
            if sizes is None:
                continue
            caption, caption_path = _caption_for(image, subset, problems, misplaced)
            original, bucket, resized = sizes
            items.append(ImageItem(image, subset, caption, caption_path, original, bucket, resized, subset.num_repeats))
        for extension, files in misplaced.items():
            problems.append(
                error(
                    subset.image_dir,
                    f"{len(files)} caption(s) exist as {extension} but "
                    f"caption_extension is {subset.caption_extension}, so they would be ignored; set "
                    f'caption_extension = "{extension}" (or rename them)',
                    files,
                )
            )
    if not items:
        problems.append(
            error(
                blueprint.source or "dataset",
                "no trainable images found; train_data_dir must be the parent of <repeats>_<name> folders with images",
            )
        )
    items, held_out = _split_validation(items, blueprint, training_seed)
    if held_out and not any(not item.subset.is_reg for item in items):
        problems.append(
            error(
                blueprint.source or "dataset",
                f"validation_split = {blueprint.validation_split} holds out every training image; lower it",
            )
        )
    items = _balance_reg_repeats(items, problems)
    items = _flag_duplicates(items, problems, hash_all)
    return DatasetScan(blueprint, tuple(items), tuple(problems), tuple(held_out))


def _split_validation(
    items: list[ImageItem], blueprint: DatasetBlueprint, training_seed: int | None
) -> tuple[list[ImageItem], list[ImageItem]]:
    """sd-scripts' split_train_val per training subset (reg subsets are never split): shuffle the images with the
    seed, hold out the last round(n x split). Held-out images count once each (no repeats)."""
    import random

    if blueprint.validation_split <= 0:
        return items, []
    seed = blueprint.validation_seed if blueprint.validation_seed is not None else (training_seed or 0)
    held_out: list[ImageItem] = []
    for subset in blueprint.train_subsets:
        mine = sorted((i for i in items if i.subset == subset), key=lambda i: i.path.name)
        random.Random(seed).shuffle(mine)
        held_out += mine[len(mine) - round(len(mine) * blueprint.validation_split) :]
    chosen = {item.path for item in held_out}
    kept = [item for item in items if item.path not in chosen]  # training order stays the scan's order
    return kept, held_out


def bucket_sample_counts(scan: DatasetScan) -> dict[tuple[int, int], int]:
    """Samples per bucket in one epoch (images x repeats)."""
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for item in scan.items:
        counts[item.bucket] += item.repeats
    return dict(sorted(counts.items()))


def steps_per_epoch(scan: DatasetScan, batch_size: int | None = None) -> int:
    """Batches per epoch: each bucket's samples cut into chunks of its dataset's batch_size (sd-scripts'
    len(dataloader)); `batch_size` overrides every dataset's."""
    counts: dict[tuple[int, tuple[int, int]], int] = defaultdict(int)
    for item in scan.items:
        counts[(item.subset.dataset_index, item.bucket)] += item.repeats
    return sum(
        math.ceil(n / (batch_size or scan.blueprint.batch_size_of(index))) for (index, _), n in counts.items() if n
    )


def total_steps(
    scan: DatasetScan,
    *,
    batch_size: int | None = None,
    max_train_epochs: int | None = None,
    max_train_steps: int | None = None,
    gradient_accumulation_steps: int = 1,
    num_processes: int = 1,
) -> tuple[int, int]:
    """(optimizer steps, epochs) as sd-scripts computes them; max_train_epochs overrides max_train_steps (1600)."""
    batches = steps_per_epoch(scan, batch_size)
    updates_per_epoch = math.ceil(batches / num_processes / gradient_accumulation_steps) if batches else 0
    if max_train_epochs:
        return max_train_epochs * updates_per_epoch, max_train_epochs
    steps = 1600 if max_train_steps is None else max_train_steps
    epochs = math.ceil(steps / updates_per_epoch) if updates_per_epoch else 0
    return steps, epochs
