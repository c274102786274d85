"""Writing Kohya LoRA `.safetensors` files.

Writing follows sd-scripts `networks/lora.py save_weights`: the hashes `sshs_model_hash` / `sshs_legacy_hash` are
computed over a serialisation that carries only the `ss_*` metadata (so later user edits of other keys do not
change them), then the file is written with the full metadata. Unlike sd-scripts we write a temporary file in the
same folder, fsync it and `os.replace` it, so a kill mid-save never leaves a truncated file under the final name.

Reading a header needs no torch: `lorapipe.safetensors_header.read_header`.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorapipe.atomic import atomic_target
from lorapipe.errors import TrainingError
from lorapipe.hashes import legacy_hash_bytes
from lorapipe.safetensors_header import parse_header


def safetensors_hashes(data: bytes) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) of a serialised safetensors file, as sd-scripts computes them."""
    data_offset = parse_header(data, "serialised safetensors").data_offset
    model_hash = hashlib.sha256(memoryview(data)[data_offset:]).hexdigest()
    return model_hash, legacy_hash_bytes(data)


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
    header, data = _rewrite_header(serialized, full, path)

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(path) as tmp, tmp.open("wb") as handle:
        handle.write(header)
        handle.write(data)
    return path


def _rewrite_header(serialized: bytes, metadata: Mapping[str, str], path: Path) -> tuple[bytes, memoryview]:
    """(8-byte length + sorted JSON header padded to 8 bytes with spaces, the unchanged tensor data)."""
    parsed = parse_header(serialized, path)
    header: dict[str, Any] = {
        name: {"dtype": entry.dtype, "shape": list(entry.shape), "data_offsets": list(entry.offsets)}
        for name, entry in parsed.tensors.items()
    }
    header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    return struct.pack("<Q", len(raw)) + raw, memoryview(serialized)[parsed.data_offset :]
