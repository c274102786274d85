"""The one safetensors header reader (stdlib only, no torch): for a file on disk or for bytes in memory.

A safetensors file is an 8-byte little-endian header length, a JSON object (`__metadata__`, a str -> str map, plus
name -> {dtype, shape, data_offsets}) and the data area the offsets index into. Every check here runs before any
tensor loader sees the file, so a truncated or hostile file fails with one line naming it instead of deep inside
safetensors or torch.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from lorapipe.errors import ModelLoadError

# Real headers are a few MiB at most (a full SDXL checkpoint); a bigger length is a corrupt field, refused before
# allocating. safetensors' own loader has the same kind of cap.
MAX_HEADER_BYTES = 100 * 1024 * 1024
LENGTH_PREFIX_BYTES = 8
METADATA_KEY = "__metadata__"
# Every dtype name the safetensors format defines (safetensors 0.8).
SAFETENSORS_DTYPES = frozenset(
    {
        "BOOL",
        "U8",
        "I8",
        "U16",
        "I16",
        "F16",
        "BF16",
        "U32",
        "I32",
        "F32",
        "F64",
        "U64",
        "I64",
        "C64",
        "F8_E4M3",
        "F8_E5M2",
        "F8_E4M3FNUZ",
        "F8_E5M2FNUZ",
        "F8_E8M0",
        "F4",
        "F6_E2M3",
        "F6_E3M2",
    }
)
DEFAULT_REMEDY = "re-save the file, or re-copy it if it was cut short"


class TensorEntry(NamedTuple):
    """One tensor's header entry; `offsets` are (begin, end) bytes within the data area."""

    dtype: str
    shape: tuple[int, ...]
    offsets: tuple[int, int]


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header: metadata, tensors in header order, where the data area starts and the total size."""

    metadata: Mapping[str, str]
    tensors: Mapping[str, TensorEntry]
    data_offset: int  # 8 + header length: the first byte of tensor data
    file_size: int

    @property
    def data_size(self) -> int:
        return self.file_size - self.data_offset


def read_header(path: Path | str, *, remedy: str = DEFAULT_REMEDY) -> SafetensorsHeader:
    """Read and validate the header of the safetensors file at `path`, without reading the tensor data.

    `remedy` ends the ModelLoadError message when the file is not a complete safetensors file (callers know
    whether the user should pass another model or re-copy a LoRA).
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            header_len = _header_length(path, handle.read(LENGTH_PREFIX_BYTES), size, remedy)
            raw = handle.read(header_len)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror or exc}); check the path and permissions") from exc
    if len(raw) != header_len:  # the file shrank between fstat and read
        raise _not_safetensors(path, f"header ends after {len(raw)} of {header_len} bytes: truncated", remedy)
    return _parse(path, raw, size, remedy)


def parse_header(data: bytes | memoryview, source: Path | str, *, remedy: str = DEFAULT_REMEDY) -> SafetensorsHeader:
    """Validate the header of a whole safetensors file held in memory; `source` names it in errors."""
    view = memoryview(data)
    header_len = _header_length(source, bytes(view[:LENGTH_PREFIX_BYTES]), len(view), remedy)
    return _parse(source, bytes(view[LENGTH_PREFIX_BYTES : LENGTH_PREFIX_BYTES + header_len]), len(view), remedy)


def _header_length(source: Path | str, prefix: bytes, size: int, remedy: str) -> int:
    if len(prefix) < LENGTH_PREFIX_BYTES:
        raise _not_safetensors(source, f"{size} bytes is too short for the 8-byte header length", remedy)
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > size - LENGTH_PREFIX_BYTES:
        raise _not_safetensors(
            source,
            f"header length {header_len} does not fit the {size}-byte file (not safetensors, or truncated)",
            remedy,
        )
    if header_len > MAX_HEADER_BYTES:
        raise _not_safetensors(
            source,
            f"header length {header_len} is over the {MAX_HEADER_BYTES}-byte cap (a corrupt length field)",
            remedy,
        )
    return header_len


def _parse(source: Path | str, raw: bytes, size: int, remedy: str) -> SafetensorsHeader:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _not_safetensors(source, f"header is not JSON: {exc}", remedy) from None
    if not isinstance(header, dict):
        raise _not_safetensors(source, "header is not a JSON object", remedy)
    metadata = header.pop(METADATA_KEY, None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _not_safetensors(source, f"{METADATA_KEY} must map strings to strings", remedy)
    data_offset = LENGTH_PREFIX_BYTES + len(raw)
    data_size = size - data_offset
    tensors = {name: _tensor_entry(source, name, entry, data_size, remedy) for name, entry in header.items()}
    return SafetensorsHeader(MappingProxyType(metadata), MappingProxyType(tensors), data_offset, size)


def _tensor_entry(source: Path | str, name: str, entry: Any, data_size: int, remedy: str) -> TensorEntry:
    try:
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    except (KeyError, TypeError):
        raise _not_safetensors(source, f"tensor {name!r} needs dtype, shape and data_offsets", remedy) from None
    if dtype not in SAFETENSORS_DTYPES:
        raise _not_safetensors(source, f"tensor {name!r} has unknown dtype {dtype!r}", remedy)
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise _not_safetensors(source, f"tensor {name!r} has a malformed shape {shape!r}", remedy)
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise _not_safetensors(source, f"tensor {name!r} has malformed data_offsets {offsets!r}", remedy)
    begin, end = offsets
    if not begin <= end <= data_size:
        raise _not_safetensors(
            source,
            f"tensor {name!r} ({dtype}, bytes {begin}..{end}) lies outside the "
            f"{data_size}-byte data area: the file is truncated or corrupt",
            remedy,
        )
    return TensorEntry(dtype, tuple(shape), (begin, end))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _not_safetensors(source: Path | str, problem: str, remedy: str) -> ModelLoadError:
    return ModelLoadError(f"{source}: not a readable .safetensors file ({problem}); {remedy}")
