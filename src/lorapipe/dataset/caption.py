"""`dataset caption`: write `<image><caption_extension>` for every image of a Kohya dataset with an auto-captioner.

The images are the ones training reads (the dataset's own config decides the subsets and caption_extension, as in
`dataset check`). Each caption starts with the subset's folder tokens ("sks dog", the trigger and class; just the
class for regularization folders), then the model's caption. Existing captions are kept unless `overwrite`;
every file is written atomically, so an interrupted run leaves whole captions and can simply be run again.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lorapipe.atomic import atomic_write_text
from lorapipe.dataset.captioners import DEFAULT_CAPTIONER, Captioner, default_model, load_captioner
from lorapipe.dataset.check import folder_blueprint
from lorapipe.dataset.images import decode_image
from lorapipe.dataset.layout import is_image_name
from lorapipe.dataset.names import printable
from lorapipe.dataset.prepare import Progress, reason_of
from lorapipe.dataset.scan import ImageItem, scan_dataset
from lorapipe.errors import DatasetError

DEFAULT_BATCH_SIZE = 8
# Decoding and each image's resizing run in these threads (Pillow releases the GIL while it works).
DECODE_THREADS = min(8, os.cpu_count() or 1)
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
        done = 0
        for batch in _prepared_batches(loaded, todo, batch_size, failed):
            written += _write_captions(loaded, batch, failed)
            done += batch_size
            if progress is not None:
                progress(min(done, len(todo)), len(todo))
    return CaptionSummary(name, tuple(written), tuple(kept), tuple(failed))


def _prepare(captioner: Captioner, item: ImageItem):
    """(the captioner's input for `item`, None) or (None, why it failed). A JPEG decodes at the smallest scale
    (1/2, 1/4, 1/8) that still covers what the model looks at: a fraction of a 12 MP photo's decoding work."""
    try:
        return captioner.prepare(decode_image(item.path, min_side=captioner.input_side)), None
    except DatasetError as exc:
        return None, CaptionFailure(item.path, reason_of(exc, item.path))


def _prepared_batches(
    captioner: Captioner, todo: Sequence[ImageItem], batch_size: int, failed: list[CaptionFailure]
) -> Iterator[list]:
    """(item, model input) batches, in order. Images decode and resize in DECODE_THREADS threads, running ahead of
    the model by `lookahead` images whatever the batch size, so one image per model call decodes just as fast.
    What waits is model-sized (a few hundred KB an image); at most DECODE_THREADS photos are decoded at once."""
    lookahead = max(batch_size, 2 * DECODE_THREADS)
    items = iter(todo)
    pending: deque = deque()
    pool = ThreadPoolExecutor(max_workers=DECODE_THREADS)

    def submit_ahead() -> None:
        while len(pending) < batch_size + lookahead and (item := next(items, None)) is not None:
            pending.append((item, pool.submit(_prepare, captioner, item)))

    try:
        submit_ahead()
        while pending:
            batch = []
            for item, future in [pending.popleft() for _ in range(min(batch_size, len(pending)))]:
                prepared, failure = future.result()
                if failure is not None:
                    failed.append(failure)
                else:
                    batch.append((item, prepared))
            submit_ahead()  # the threads keep decoding while the model captions this batch
            yield batch
    finally:  # a failed model call or Ctrl-C does not wait for the images queued ahead
        pool.shutdown(cancel_futures=True)


def _write_captions(loaded: Captioner, batch: list, failed: list[CaptionFailure]) -> list[Path]:
    written = []
    generated = loaded.caption([prepared for _, prepared in batch]) if batch else []
    for (item, _), words in zip(batch, generated):
        text = caption_text(item.subset.class_tokens or "", words)
        if not text:
            reason = "the captioner returned no words and the folder has no class tokens; write this caption by hand"
            failed.append(CaptionFailure(item.path, reason))
            continue
        target = caption_target(item)
        atomic_write_text(target, text + "\n")
        written.append(target)
    return written
