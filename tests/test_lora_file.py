"""The safetensors file: sd-scripts' hashes, atomic replacement under a real kill, torch-free header reading."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

from lorapipe.errors import LorapipeError
from lorapipe.lora.file import save_kohya_lora
from lorapipe.safetensors_header import read_header

METADATA = {"ss_network_module": "networks.lora", "ss_network_dim": "4", "modelspec.title": "toy"}


def lora_tensors(rows: int = 4, cols: int = 96, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.randn(rows, cols, generator=gen),
        "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.randn(cols, rows, generator=gen),
        "lora_unet_input_blocks_4_1_proj_in.alpha": torch.tensor(1.0),
    }


def sd_scripts_hashes(tensors, metadata) -> tuple[str, str]:
    """The two hashes exactly as sd-scripts' precalculate_safetensors_hashes computes them (reference version)."""
    data = save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    header_len = int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[8 + header_len :]).hexdigest()
    legacy = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy


def test_saved_file_has_metadata_tensors_and_sd_scripts_hashes(tmp_path):
    tensors = lora_tensors(rows=8, cols=40_000)  # > 1 MiB, so the legacy hash covers real tensor bytes
    path = save_kohya_lora(tmp_path / "out" / "toy.safetensors", tensors, METADATA)
    with safe_open(path, "pt") as handle:
        metadata = handle.metadata()
        for name, tensor in tensors.items():
            assert torch.equal(handle.get_tensor(name), tensor)
    assert {k: metadata[k] for k in METADATA} == METADATA
    assert (metadata["sshs_model_hash"], metadata["sshs_legacy_hash"]) == sd_scripts_hashes(tensors, METADATA)
    # The model hash covers only tensor bytes: equal to the same hash taken over the final file.
    raw = path.read_bytes()
    assert hashlib.sha256(raw[8 + struct.unpack("<Q", raw[:8])[0] :]).hexdigest() == metadata["sshs_model_hash"]
    other = save_kohya_lora(tmp_path / "other.safetensors", lora_tensors(rows=8, cols=40_000, seed=1), METADATA)
    assert read_header(other).metadata["sshs_model_hash"] != metadata["sshs_model_hash"]


def test_hashes_ignore_non_ss_metadata(tmp_path):
    tensors = lora_tensors()
    first = read_header(save_kohya_lora(tmp_path / "a.safetensors", tensors, METADATA)).metadata
    edited = read_header(
        save_kohya_lora(tmp_path / "b.safetensors", tensors, METADATA | {"modelspec.title": "renamed by a user"})
    ).metadata
    assert first["sshs_model_hash"] == edited["sshs_model_hash"]
    assert first["sshs_legacy_hash"] == edited["sshs_legacy_hash"]


def test_save_refuses_non_string_metadata(tmp_path):
    with pytest.raises(LorapipeError, match="ss_network_dim"):
        save_kohya_lora(tmp_path / "x.safetensors", lora_tensors(), {"ss_network_dim": 4})
    assert not list(tmp_path.iterdir())


def test_overwrite_replaces_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "toy.safetensors"
    save_kohya_lora(path, lora_tensors(seed=0), METADATA)
    save_kohya_lora(path, lora_tensors(seed=1), METADATA)
    assert [p.name for p in tmp_path.iterdir()] == ["toy.safetensors"]
    with safe_open(path, "pt") as handle:
        assert torch.equal(
            handle.get_tensor("lora_unet_input_blocks_4_1_proj_in.lora_down.weight"),
            lora_tensors(seed=1)["lora_unet_input_blocks_4_1_proj_in.lora_down.weight"],
        )


_KILLED_WRITER = """
import sys, torch
from pathlib import Path
from lorapipe.lora.file import save_kohya_lora
tensors = {f"lora_unet_m{i}.lora_down.weight": torch.ones(1024, 1024) for i in range(32)}  # 128 MiB
print("start", flush=True)
while True:
    save_kohya_lora(Path(sys.argv[1]), tensors, {"ss_network_dim": "4"})
"""


def test_a_kill_mid_save_never_leaves_a_truncated_file_under_the_final_name(tmp_path):
    path = tmp_path / "toy.safetensors"
    good = save_kohya_lora(path, lora_tensors(), METADATA)
    good_bytes = good.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"start"
        deadline = time.monotonic() + 60
        # Kill as soon as the writer is inside save_file (its temporary file exists and is growing).
        while not list(tmp_path.glob("toy.safetensors.tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert list(tmp_path.glob("toy.safetensors.tmp-*")), "writer never started writing"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    final = path.read_bytes()
    assert final == good_bytes or read_header(path).tensors  # either the old file or a complete new one
    header = read_header(path)
    assert header.metadata["ss_network_dim"] == "4" and header.tensors


def test_same_tensors_and_metadata_give_the_same_bytes(tmp_path):
    """Reproducible runs: safetensors' own writer orders metadata keys differently from call to call."""
    metadata = {f"ss_key_{i}": str(i) for i in range(50)} | METADATA
    first = save_kohya_lora(tmp_path / "a.safetensors", lora_tensors(), metadata).read_bytes()
    reordered = dict(reversed(list(metadata.items())))
    second = save_kohya_lora(tmp_path / "b.safetensors", lora_tensors(), reordered).read_bytes()
    assert first == second
    header = json.loads(first[8 : 8 + struct.unpack("<Q", first[:8])[0]])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
