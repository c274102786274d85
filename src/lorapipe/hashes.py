"""File hashes as A1111, sd-scripts and the store compute them (stdlib only, any stage may use it).

- `sha256_file`: sha256 of a whole file, or of everything after `offset` (a safetensors file's tensor data: A1111's
  `addnet` hash, Civitai's AutoV3); `sha256_files`: several files read as one stream (a diffusers folder's weights).
- `legacy_hash_*`: A1111's old 8-hex model hash and sd-scripts' `addnet_hash_legacy`: sha256 of the 64 KiB at
  offset 1 MiB.
- `HashCache`: whole-file sha256 values remembered across processes in `<cache dir>/hashes.json`, keyed by absolute
  path and valid while every file's size and mtime_ns are unchanged, as A1111 keeps `hashes` in its cache.json; so a
  multi-GB base model is read once, not on every `generate` or server start.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from lorapipe.atomic import atomic_write_text
from lorapipe.file_names import user_cache_dir

CHUNK = 1 << 20
LEGACY_HASH_OFFSET = 0x100000
LEGACY_HASH_LENGTH = 0x10000


def sha256_file(path: str | Path, offset: int = 0) -> str:
    """Hex sha256 of the file's bytes from `offset` on, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    _feed(digest, path, offset)
    return digest.hexdigest()


def sha256_files(paths: Sequence[str | Path]) -> str:
    """Hex sha256 of the files' bytes read one after another, as one stream (a folder of weight files)."""
    digest = hashlib.sha256()
    for path in paths:
        _feed(digest, path)
    return digest.hexdigest()


def _feed(digest: hashlib._Hash, path: str | Path, offset: int = 0) -> None:
    with Path(path).open("rb") as handle:
        handle.seek(offset)
        while chunk := handle.read(CHUNK):
            digest.update(chunk)


def legacy_hash_bytes(data: bytes) -> str:
    """A1111's legacy hash of a file already in memory (of an empty block when the file is under 1 MiB)."""
    return hashlib.sha256(data[LEGACY_HASH_OFFSET : LEGACY_HASH_OFFSET + LEGACY_HASH_LENGTH]).hexdigest()[:8]


def legacy_hash_file(path: str | Path) -> str:
    """A1111's legacy hash of a file on disk; reads only the 64 KiB it hashes."""
    with Path(path).open("rb") as handle:
        handle.seek(LEGACY_HASH_OFFSET)
        return hashlib.sha256(handle.read(LEGACY_HASH_LENGTH)).hexdigest()[:8]


HASH_CACHE_NAME = "hashes.json"
_HASH_CACHE_VERSION = 1


class HashCache:
    """sha256 values of local files, remembered in `folder/hashes.json` (default: the user cache folder).

    An entry is reused only while the files it covers have the same absolute paths, sizes and mtime_ns, so an edited
    or replaced file is hashed again. A missing, unreadable or malformed cache file counts as empty and is rewritten;
    a cache that cannot be written (read-only home) only costs the re-hash next time.
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        self.file = Path(folder if folder is not None else user_cache_dir()) / HASH_CACHE_NAME

    def sha256(self, path: str | Path) -> str:
        """sha256 of one file (what A1111 shows as `Model hash`, first 10 hex chars)."""
        return self.sha256_of_files(path, [path])

    def sha256_of_files(self, key: str | Path, paths: Sequence[str | Path]) -> str:
        """`sha256_files(paths)`, cached under `key` (the file or the folder that holds them)."""
        name = str(Path(key).resolve())
        stamp = [_stamp(Path(p)) for p in paths]
        entry = self._entries().get(name)
        if isinstance(entry, dict) and entry.get("files") == stamp and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
        value = sha256_files(paths)
        self._remember(name, {"files": stamp, "sha256": value})
        return value

    def _entries(self) -> dict:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # absent, unreadable or corrupt: start afresh
            return {}
        if not isinstance(data, dict) or data.get("version") != _HASH_CACHE_VERSION:
            return {}
        entries = data.get("hashes")
        return entries if isinstance(entries, dict) else {}

    def _remember(self, name: str, entry: dict) -> None:
        # Re-read just before writing so entries another process added meanwhile are kept.
        entries = self._entries()
        entries[name] = entry
        text = json.dumps({"version": _HASH_CACHE_VERSION, "hashes": entries}, indent=1, sort_keys=True)
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.file, text)
        except OSError:  # the value is still right; only the next call pays the hash again
            pass


def _stamp(path: Path) -> list:
    info = path.stat()
    return [str(path.resolve()), info.st_size, info.st_mtime_ns]
