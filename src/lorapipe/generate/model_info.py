"""What the infotext and /sd-models say about the loaded base model: name, title and A1111 hashes (no torch).

A1111 hashes a checkpoint file whole (SHA-256; the first 10 hex chars are `Model hash`). A diffusers folder has
no single file, so lorapipe hashes its weight files in sorted path order as one stream; a hub id is hashed the
same way once resolved to a local folder, else left without a hash (A1111 leaves the key out too). The hashes are
remembered in lorapipe's hash cache (`hashes.HashCache`), so only the first call after a file changes reads it whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lorapipe.hashes import LEGACY_HASH_OFFSET, HashCache, legacy_hash_file

MODEL_HASH_CHARS = 10
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class ModelInfo:
    """The base model as A1111 names it: `name` (stem), `sha256` (None when not hashed), `location`."""

    name: str
    location: str
    sha256: str | None
    legacy_hash: str | None = None

    @property
    def short_hash(self) -> str | None:
        return self.sha256[:MODEL_HASH_CHARS] if self.sha256 else None

    @property
    def filename(self) -> str:
        return Path(self.location).name

    @property
    def title(self) -> str:
        """`<name> [<shorthash>]`, the value clients put in `sd_model_checkpoint`."""
        return f"{self.filename} [{self.short_hash}]" if self.short_hash else self.filename

    def aliases(self) -> set[str]:
        """Every spelling A1111 accepts for this checkpoint in `sd_model_checkpoint`."""
        names = {self.title, self.filename, self.name, self.location}
        if self.short_hash:
            names |= {self.short_hash, self.sha256, f"{self.name} [{self.short_hash}]"}
        if self.legacy_hash:
            names |= {self.legacy_hash, f"{self.filename} [{self.legacy_hash}]"}
        return names


def describe_model(location: str, *, hash_weights: bool = True, hash_cache: HashCache | None = None) -> ModelInfo:
    """ModelInfo for a single file, a diffusers folder or a hub id (hub ids get no hash); `hash_cache` defaults to
    the one in the user cache folder."""
    path = Path(location)
    name = path.stem if path.is_file() else path.name
    if not hash_weights or not path.exists():
        return ModelInfo(name=name, location=location, sha256=None)
    files = (
        [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    )
    sha256 = (hash_cache or HashCache()).sha256_of_files(path, files)
    # A1111's legacy hash is accepted as an alias only, and only for files long enough to have one.
    legacy = legacy_hash_file(path) if path.is_file() and path.stat().st_size > LEGACY_HASH_OFFSET else None
    return ModelInfo(name=name, location=location, sha256=sha256, legacy_hash=legacy)
