"""File hashes as A1111, sd-scripts and the store compute them (stdlib only, any stage may use it).

- `sha256_file`: sha256 of a whole file, or of everything after `offset` (a safetensors file's tensor data: A1111's
  `addnet` hash, Civitai's AutoV3).
- `legacy_hash_*`: A1111's old 8-hex model hash and sd-scripts' `addnet_hash_legacy`: sha256 of the 64 KiB at
  offset 1 MiB.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20
LEGACY_HASH_OFFSET = 0x100000
LEGACY_HASH_LENGTH = 0x10000


def sha256_file(path: str | Path, offset: int = 0) -> str:
    """Hex sha256 of the file's bytes from `offset` on, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        handle.seek(offset)
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def legacy_hash_bytes(data: bytes) -> str:
    """A1111's legacy hash of a file already in memory (of an empty block when the file is under 1 MiB)."""
    return hashlib.sha256(data[LEGACY_HASH_OFFSET : LEGACY_HASH_OFFSET + LEGACY_HASH_LENGTH]).hexdigest()[:8]


def legacy_hash_file(path: str | Path) -> str:
    """A1111's legacy hash of a file on disk; reads only the 64 KiB it hashes."""
    with Path(path).open("rb") as handle:
        handle.seek(LEGACY_HASH_OFFSET)
        return hashlib.sha256(handle.read(LEGACY_HASH_LENGTH)).hexdigest()[:8]
