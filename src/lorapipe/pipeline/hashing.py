"""Content hashes that key the pipeline's step cache: by the bytes of dataset, config and base model, never by path.

A folder's hash covers every file's relative path and sha256 (hidden files, ``.sha256`` sidecars and our own latent
caches excluded, since they do not change what is trained). Files are hashed once per (path, size, mtime) thanks to
the run database, so re-checking a multi-GB base model costs a stat per file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from lorapipe.hashes import sha256_file
from lorapipe.pipeline.records import RunStore

# Derived files that may appear next to a dataset's images without changing its content.
_IGNORED_SUFFIXES = (".sha256", ".npz", ".tmp")


@dataclass(frozen=True)
class ContentHasher:
    """Hashes files and folders, remembering file hashes in the run database when one is given."""

    store: RunStore | None = None

    def file(self, path: Path) -> str:
        path = Path(path).resolve()
        stat = path.stat()
        if self.store is not None:
            cached = self.store.cached_file_hash(str(path), stat.st_size, stat.st_mtime_ns)
            if cached:
                return cached
        value = sha256_file(path)
        if self.store is not None:
            self.store.remember_file_hash(str(path), stat.st_size, stat.st_mtime_ns, value)
        return value

    def folder(self, root: Path) -> str:
        root = Path(root)
        digest = hashlib.sha256()
        for path in content_files(root):
            digest.update(path.relative_to(root).as_posix().encode("utf-8") + b"\0")
            digest.update(self.file(path).encode("ascii") + b"\n")
        return digest.hexdigest()

    def path_or_name(self, value: str) -> str:
        """A local file or folder by content; anything else (a hub id) by its text."""
        candidate = Path(value).expanduser()
        if candidate.is_dir():
            return self.folder(candidate)
        if candidate.is_file():
            return self.file(candidate)
        return hashlib.sha256(f"name:{value}".encode()).hexdigest()


def content_files(root: Path) -> list[Path]:
    """The files that make up a folder's content hash, sorted (what an upload of the folder must carry)."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.is_file() and _counts(p.relative_to(root)))


def _counts(relative: Path) -> bool:
    if any(part.startswith(".") for part in relative.parts):
        return False
    return not relative.name.endswith(_IGNORED_SUFFIXES)


def train_cache_key(
    *,
    dataset_hash: str,
    config_hash: str | None,
    base_model_hash: str,
    overrides: tuple[str, ...],
    trainer_version: str,
) -> str:
    """One key for the train step: any change in data, config, base model, overrides or trainer retrains."""
    payload = json.dumps(
        {
            "dataset": dataset_hash,
            "config": config_hash,
            "base_model": base_model_hash,
            "overrides": sorted(overrides),
            "trainer": trainer_version,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()
