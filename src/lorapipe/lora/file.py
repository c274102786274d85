"""Writing and reading Kohya LoRA `.safetensors` files.

Writing follows sd-scripts `networks/lora.py save_weights`: the hashes `sshs_model_hash` / `sshs_legacy_hash` are
computed over a serialisation that carries only the `ss_*` metadata (so later user edits of other keys do not
change them), then the file is written with the full metadata. Unlike sd-scripts we write a temporary file in the
same folder, fsync it and `os.replace` it, so a kill mid-save never leaves a truncated file under the final name.

Reading the header needs no torch: a safetensors file is an 8-byte little-endian header length, a JSON header
(`__metadata__` plus name -> {dtype, shape, data_offsets}) and the raw tensor bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorapipe.atomic import atomic_target
from lorapipe.errors import ModelLoadError, TrainingError

# sd-scripts train_util.addnet_hash_legacy: 64 KiB at offset 1 MiB.
LEGACY_HASH_OFFSET = 0x100000
LEGACY_HASH_LENGTH = 0x10000
# A LoRA header is a few hundred KiB at most; refuse absurd lengths before allocating.
MAX_HEADER_BYTES = 100 * 1024 * 1024
SAFETENSORS_DTYPES = frozenset(
    {"BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64", "F8_E4M3", "F8_E5M2"}
)


def safetensors_hashes(data: bytes) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) of a serialised safetensors file, as sd-scripts computes them."""
    (header_len,) = struct.unpack("<Q", data[:8])
    model_hash = hashlib.sha256(memoryview(data)[8 + header_len:]).hexdigest()
    legacy_hash = hashlib.sha256(data[LEGACY_HASH_OFFSET:LEGACY_HASH_OFFSET + LEGACY_HASH_LENGTH]).hexdigest()[:8]
    return model_hash, legacy_hash


def save_kohya_lora(path: Path, tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> Path:
    """Write `tensors` with `metadata` plus `sshs_*` hashes to `path` atomically; returns the path.

    The same tensors and metadata always give the same bytes: the header is written with sorted keys (safetensors'
    own writer orders `__metadata__` differently from run to run), and the tensor data is laid out exactly as
    safetensors lays it out, so `sshs_model_hash` equals what sd-scripts computes for the same tensors.
    """
    from safetensors.torch import save

    path = Path(path)
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TrainingError(f"{path}: metadata values must be strings ({bad[:3]}); convert them with str()")
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
    full = dict(metadata)
    ss_only = {k: v for k, v in full.items() if k.startswith("ss_")}
    serialized = save(state, ss_only)
    full["sshs_model_hash"], full["sshs_legacy_hash"] = safetensors_hashes(serialized)
    header, data = _rewrite_header(serialized, full)

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(path) as tmp, tmp.open("wb") as handle:
        handle.write(header)
        handle.write(data)
    return path


def _rewrite_header(serialized: bytes, metadata: Mapping[str, str]) -> tuple[bytes, memoryview]:
    """(8-byte length + sorted JSON header padded to 8 bytes with spaces, the unchanged tensor data)."""
    (header_len,) = struct.unpack("<Q", serialized[:8])
    header = json.loads(serialized[8:8 + header_len])
    header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    return struct.pack("<Q", len(raw)) + raw, memoryview(serialized)[8 + header_len:]


def read_lora_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...]]]]:
    """(metadata, {tensor name: (dtype, shape)}) from a safetensors file's header, without torch.

    Raises ModelLoadError naming the file when it is not a complete safetensors file.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ModelLoadError(f"{path}: {size} bytes is too short for a safetensors file; re-save or re-copy it")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(MAX_HEADER_BYTES, size - 8):
                raise ModelLoadError(f"{path}: not a safetensors file (header length {header_len} does not fit "
                                     f"the {size}-byte file); use a .safetensors LoRA")
            raw = handle.read(header_len)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror or exc}); check the path and permissions") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: not a safetensors file (header is not JSON: {exc}); use a .safetensors "
                             "LoRA") from exc
    return _parse_header(path, header, data_size=size - 8 - header_len)


def _parse_header(path: Path, header: Any, *, data_size: int) -> tuple[dict[str, str], dict[str, Any]]:
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path}: not a safetensors file (header is not a JSON object); use a .safetensors LoRA")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelLoadError(f"{path}: __metadata__ must map strings to strings; re-save the file")
    index: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, entry in header.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{path}: tensor {name!r} has a malformed header entry; re-save the file") from exc
        if dtype not in SAFETENSORS_DTYPES or not 0 <= int(start) <= int(end) <= data_size:
            raise ModelLoadError(f"{path}: tensor {name!r} points outside the file ({dtype}, {start}..{end} of "
                                 f"{data_size} bytes); the file is truncated or corrupt, re-copy it")
        index[name] = (dtype, shape)
    return dict(metadata), index

