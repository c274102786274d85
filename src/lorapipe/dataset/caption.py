"""`dataset caption`: write `<image><caption_extension>` for every image of a Kohya dataset with an auto-captioner.

The images are the ones training reads (the dataset's own config decides the subsets and caption_extension, as in
`dataset check`). Each caption starts with the subset's folder tokens ("sks dog", the trigger and class; just the
class for regularization folders), then the model's caption. Existing captions are kept unless `overwrite`;
every file is written atomically, so an interrupted run leaves whole captions and can simply be run again.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lorapipe.atomic import atomic_write_text
from lorapipe.dataset.captioners import DEFAULT_CAPTIONER, default_model, load_captioner
from lorapipe.dataset.check import folder_blueprint
from lorapipe.dataset.images import decode_image
from lorapipe.dataset.layout import is_image_name
from lorapipe.dataset.names import printable
from lorapipe.dataset.prepare import Progress, reason_of
from lorapipe.dataset.scan import ImageItem, scan_dataset
from lorapipe.errors import DatasetError

DEFAULT_BATCH_SIZE = 8
# Captioners look at 384-768 px (BLIP 384, WD14 448, Florence-2 768): JPEGs decode at the smallest scale that keeps
# this many pixels on the shorter side, a quarter or less of a 12 MP photo's decoding work.
DECODE_MIN_SIDE = 1024
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class CaptionFailure:
    path: Path
    reason: str


@dataclass(frozen=True)
class CaptionSummary:
    captioner: str  # family and model
    written: tuple[Path, ...]  # caption files written (new or overwritten)
    kept: tuple[Path, ...]  # images whose existing caption was left alone
    failed: tuple[CaptionFailure, ...]

    @property
    def captioned(self) -> int:
        return len(self.written)


def caption_text(prefix: str, generated: str) -> str:
    """One caption line: the folder tokens first, then the model's words (whitespace and newlines collapsed)."""
    generated = _SPACES.sub(" ", generated).strip(" ,")
    return ", ".join(part for part in (prefix.strip(), generated) if part)


def caption_target(item: ImageItem) -> Path:
    return item.path.with_name(item.path.stem + item.subset.caption_extension)


def caption_dataset(
    dataset_dir: Path,
    *,
    captioner: str = DEFAULT_CAPTIONER,
    model: str | None = None,
    overwrite: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
    device: str | None = None,
) -> CaptionSummary:
    """Caption every image of the dataset folder `dataset_dir` (the one holding kohya-sdxl-config.toml).

    `model` is a local folder or hub id (default: the family's usual checkpoint); `progress(done, total)` is called
    after each batch."""
    dataset_dir = Path(dataset_dir).expanduser()
    if not dataset_dir.is_dir():
        raise DatasetError(
            f"{printable(dataset_dir)}: dataset folder does not exist; pass the folder `lorapipe dataset prepare` wrote"
        )
    if batch_size < 1:
        raise DatasetError(f"--batch-size {batch_size}: must be at least 1")
    blueprint, _, _ = folder_blueprint(dataset_dir)
    scan = scan_dataset(blueprint)
    failed = [
        CaptionFailure(Path(p.path), p.reason) for p in scan.problems if p.severity == "error" and is_image_name(p.path)
    ]
    todo: list[ImageItem] = []
    kept: list[Path] = []
    for item in scan.items + scan.validation_items:
        if item.caption_path is not None and not overwrite:
            kept.append(item.path)
        else:
            todo.append(item)
    written: list[Path] = []
    name = f"{captioner} {model or default_model(captioner)}"
    if todo:
        loaded = load_captioner(captioner, model, device=device)
        name = loaded.name
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            written += _caption_batch(loaded, batch, failed)
            if progress is not None:
                progress(min(start + batch_size, len(todo)), len(todo))
    return CaptionSummary(name, tuple(written), tuple(kept), tuple(failed))


def _caption_batch(loaded, batch: Sequence[ImageItem], failed: list[CaptionFailure]) -> list[Path]:
    images, items = [], []
    for item in batch:
        try:
            images.append(decode_image(item.path, min_side=DECODE_MIN_SIDE))
            items.append(item)
        except DatasetError as exc:
            failed.append(CaptionFailure(item.path, reason_of(exc, item.path)))
    written = []
    for item, generated in zip(items, loaded.caption(images) if images else []):
        text = caption_text(item.subset.class_tokens or "", generated)
        if not text:
            failed.append(
                CaptionFailure(
                    item.path,
                    "the captioner returned no words and the folder has no class tokens; write this caption by hand",
                )
            )
            continue
        target = caption_target(item)
        atomic_write_text(target, text + "\n")
        written.append(target)
    return written
