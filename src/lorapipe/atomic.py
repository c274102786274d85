"""Atomic file writes: a temporary file in the same folder, fsync, `os.replace`, then fsync the folder.

A reader, or a process killed mid-write, sees either the old file or the complete new one, never a truncated file
under the final name. The temporary file is `<name>.tmp-<pid>[suffix]`. Standard library only, so every stage
(including the trainer's container entry point) may import it. Callers create the parent folder themselves.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

_COPY_CHUNK = 4 * 1024 * 1024


@contextlib.contextmanager
def atomic_target(path: Path | str, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds, fsync it and move it into place.

    For writers that want a file name (safetensors `save_file`, `torch.save`, PIL). `suffix` ends the temporary
    name for writers and scanners that look at the extension. On failure the temporary file is removed.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        yield tmp
        # fsync before the rename: otherwise a crash can leave the new name pointing at unwritten blocks.
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_target(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write `text` as UTF-8 to `path` atomically."""
    with atomic_target(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_copy(source: Path | str, target: Path | str) -> None:
    """Copy `source` to `target` atomically (readers of `target` never see half a file)."""
    with atomic_target(target) as tmp, open(source, "rb") as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, _COPY_CHUNK)


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (POSIX); not possible on every platform or filesystem, so best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
