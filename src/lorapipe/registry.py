"""Catalogue of the LoRA files under one folder, read from safetensors headers only (no torch).

Names are keys, never paths: a `<lora:NAME:w>` tag or an HTTP request names an entry of the catalogue, and
the catalogue was built by walking one root with an extension allow-list. Nothing ever turns a requested name
into a filesystem path, so `../`, absolute paths and symlinks that leave the root cannot be reached.
Resolution follows AUTOMATIC1111: file stem first, then the `ss_output_name` alias (an alias shared by two
files is ambiguous and only exact stems work for it).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from lorapipe.errors import GenerationError, ModelLoadError
from lorapipe.hashes import sha256_file
from lorapipe.lora.peft_config import ADAPTER_CONFIG_NAME, PEFT_WEIGHTS_NAME
from lorapipe.safetensors_header import SafetensorsHeader, read_header

log = logging.getLogger(__name__)

LORA_SUFFIX = ".safetensors"
MAX_TENSORS = 100_000
# The largest network file that makes sense for SDXL: a full-rank LyCORIS `full` of UNet + both text encoders in
# fp32 is ~10 GiB. Anything bigger is not a LoRA (or is hostile) and is never hashed or loaded.
MAX_LORA_BYTES = 12 * 1024**3
LORA_HASH_CHARS = 12
# A1111 refuses these aliases from the start (extensions-builtin/Lora/networks.py).
_FORBIDDEN_ALIASES = frozenset({"none", "addams"})
_FORBIDDEN_NAME_CHARS = ("/", "\\", "\x00", "%", ":")


@dataclass(frozen=True)
class LoraEntry:
    """One LoRA file: `name` is its stem (the key; `lora_name_of`), `alias` its `ss_output_name` (or the name)."""

    name: str
    alias: str
    path: Path
    metadata: Mapping[str, str] = field(repr=False)
    short_hash: str
    sha256_tensors: str = field(repr=False)
    size: int
    mtime_ns: int


def check_lora_name(name: str) -> str:
    """Return `name` if it can be a registry key; raise GenerationError for anything path-like."""
    if not name or name.strip() != name or name in (".", ".."):
        raise GenerationError(f"LoRA name {name!r}: empty or padded; use a file stem from the LoRA folder")
    if any(ch in name for ch in _FORBIDDEN_NAME_CHARS) or ".." in name or any(ord(ch) < 32 for ch in name):
        raise GenerationError(f"LoRA name {name!r}: contains a path character; LoRA names are file stems, not paths")
    return name


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """The validated header of a LoRA file (`lorapipe.safetensors_header`), as a GenerationError when it is bad.

    The registry adds a cap on the tensor count, so a truncated or hostile file is refused before any tensor
    loader sees it.
    """
    try:
        header = read_header(path, remedy="re-copy the LoRA or remove it from the LoRA folder")
    except ModelLoadError as exc:
        raise GenerationError(str(exc)) from exc
    if len(header.tensors) > MAX_TENSORS:
        raise GenerationError(f"{path}: {len(header.tensors)} tensors is more than {MAX_TENSORS}; refusing to load")
    return header


def _inside(root_real: str, path: Path) -> bool:
    real = os.path.realpath(path)
    return os.path.commonpath([root_real, real]) == root_real


@dataclass(frozen=True)
class _Catalogue:
    by_name: Mapping[str, LoraEntry]
    by_alias: Mapping[str, LoraEntry]
    problems: tuple[str, ...]
    skipped: Mapping[str, str] = field(default_factory=dict)  # stem -> why the file was left out


class LoraRegistry:
    """LoRA catalogue of one root folder; `refresh()` rescans, `resolve(name)` looks a key up.

    The catalogue itself is an immutable snapshot swapped in whole, so readers on other threads never see a
    half-built map.
    """

    def __init__(self, root: Path | str | None):
        self.root = Path(root) if root else None
        self._lock = threading.Lock()
        self._catalogue = _Catalogue(MappingProxyType({}), MappingProxyType({}), ())
        if self.root is not None:
            if not self.root.is_dir():
                raise GenerationError(f"{self.root}: LoRA folder does not exist; pass an existing --lora-dir")
            self.refresh()

    def entries(self) -> list[LoraEntry]:
        return sorted(self._catalogue.by_name.values(), key=lambda e: e.name.lower())

    @property
    def problems(self) -> tuple[str, ...]:
        """Files skipped by the last scan, each with its reason."""
        return self._catalogue.problems

    def skip_reason(self, name: str) -> str | None:
        """Why the file with stem `name` was left out of the catalogue, or None when no such file was skipped."""
        return self._catalogue.skipped.get(name)

    def refresh(self) -> None:
        """Rescan the root; unchanged files (same size and mtime) keep their computed hash."""
        if self.root is None:
            return
        with self._lock:
            previous = {e.path: e for e in self._catalogue.by_name.values()}
            known = set(self._catalogue.problems)
            self._catalogue = _scan(self.root, previous)
        for problem in self._catalogue.problems:
            if problem not in known:  # each bad file is logged once, not on every rescan
                log.warning("LoRA folder: %s", problem)

    def resolve(self, name: str) -> LoraEntry | None:
        """The entry for a stem or alias, or None when unknown (A1111 warns and goes on without it)."""
        check_lora_name(name)
        entry = self._lookup(name)
        if entry is None and self.root is not None:
            self.refresh()  # A1111 rescans once on a miss so newly copied files work without a restart
            entry = self._lookup(name)
        return entry

    def _lookup(self, name: str) -> LoraEntry | None:
        catalogue = self._catalogue
        if name in catalogue.by_name:
            return catalogue.by_name[name]
        if name.lower() in _FORBIDDEN_ALIASES:
            return None
        return catalogue.by_alias.get(name)

    def verify_for_loading(self, entry: LoraEntry) -> Path:
        """Re-check an entry just before its tensors are read: still inside the root, same file, sane header."""
        if self.root is not None and not _inside(os.path.realpath(self.root), entry.path):
            raise GenerationError(f"{entry.path}: now points outside the LoRA folder; refusing to load")
        stat = entry.path.stat()
        if (stat.st_size, stat.st_mtime_ns) != (entry.size, entry.mtime_ns):
            self.refresh()
            fresh = self._catalogue.by_name.get(entry.name)
            if fresh is None:
                raise GenerationError(f"{entry.path}: changed and is no longer a valid LoRA; check the file")
            entry = fresh
        read_safetensors_header(entry.path)
        return entry.path


def _scan(root: Path, previous: Mapping[Path, LoraEntry]) -> _Catalogue:
    root_real = os.path.realpath(root)
    by_name: dict[str, LoraEntry] = {}
    aliases: dict[str, list[LoraEntry]] = {}
    problems: list[str] = []
    skipped: dict[str, str] = {}
    for path in _lora_files(root):
        if not _inside(root_real, path):
            problems.append(f"{path}: symlink leads outside {root}; skipped")
            continue
        name = lora_name_of(path)
        try:
            check_lora_name(name)
            entry = _entry_for(path, name, previous.get(path))
        except (GenerationError, OSError) as exc:
            problems.append(str(exc))
            skipped[name] = str(exc)
            continue
        if entry.name in by_name:
            problems.append(f"{path}: same name {entry.name!r} as {by_name[entry.name].path}; skipped")
            continue
        by_name[entry.name] = entry
        aliases.setdefault(entry.alias, []).append(entry)
    # An alias shared by two files is ambiguous: only the exact stems resolve them.
    by_alias = {alias: group[0] for alias, group in aliases.items() if len(group) == 1}
    return _Catalogue(MappingProxyType(by_name), MappingProxyType(by_alias), tuple(problems), MappingProxyType(skipped))


def _lora_files(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for filename in sorted(filenames):
            if filename.lower().endswith(LORA_SUFFIX) and not filename.startswith("."):
                yield Path(dirpath) / filename


def lora_name_of(path: Path) -> str:
    """The file's stem; for a folder peft saved (`adapter_model.safetensors` beside `adapter_config.json`), the
    folder's name, so two such folders do not both answer to `adapter_model`."""
    if path.name == PEFT_WEIGHTS_NAME and (path.parent / ADAPTER_CONFIG_NAME).is_file():
        return path.parent.name
    return path.stem


def _entry_for(path: Path, name: str, previous: LoraEntry | None) -> LoraEntry:
    stat = path.stat()
    if previous is not None and (previous.size, previous.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
        return previous
    if stat.st_size > MAX_LORA_BYTES:
        raise GenerationError(
            f"{path}: {stat.st_size / 1024**3:.1f} GiB is larger than any SDXL network file "
            f"({MAX_LORA_BYTES // 1024**3} GiB); move it out of the LoRA folder"
        )
    header = read_safetensors_header(path)
    metadata = dict(header.metadata)
    tensor_hash = sha256_file(path, offset=header.data_offset)  # A1111's addnet hash
    # Kohya writes sshs_model_hash at save time and A1111 trusts it first; fall back to the tensor-data hash.
    declared = metadata.get("sshs_model_hash", "").strip().lower()
    short = (declared or tensor_hash)[:LORA_HASH_CHARS]
    return LoraEntry(
        name=name,
        alias=metadata.get("ss_output_name") or name,
        path=path,
        metadata=MappingProxyType(metadata),
        short_hash=short,
        sha256_tensors=tensor_hash,
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
    )
