"""LoRA registry: names are keys (stems or ss_output_name), never paths; only sane .safetensors files count."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import pytest

from lorapipe.errors import GenerationError
from lorapipe.registry import LoraRegistry, check_lora_name, read_safetensors_header


def _write_safetensors(path: Path, metadata: dict[str, str] | None = None, payload: bytes = b"\x01\x02\x03\x04"):
    header = {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, len(payload)]}}
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + payload)
    return path


def test_stem_and_alias_resolve_and_hash_is_a1111s(tmp_path):
    _write_safetensors(tmp_path / "sub" / "toy.safetensors", {"ss_output_name": "dwjz_toy"}, b"abcd")
    _write_safetensors(tmp_path / "kohya.safetensors", {"sshs_model_hash": "ABCDEF0123456789"})
    registry = LoraRegistry(tmp_path)
    toy = registry.resolve("toy")
    assert toy is not None and registry.resolve("dwjz_toy") == toy
    # No sshs_model_hash: sha256 of the bytes after the header (A1111 addnet hash), 12 hex chars.
    assert toy.short_hash == hashlib.sha256(b"abcd").hexdigest()[:12]
    # Kohya's embedded hash wins, as in A1111.
    assert registry.resolve("kohya").short_hash == "abcdef012345"
    assert registry.resolve("unknown") is None


def test_shared_alias_is_ambiguous_but_stems_work(tmp_path):
    _write_safetensors(tmp_path / "a.safetensors", {"ss_output_name": "same"})
    _write_safetensors(tmp_path / "b.safetensors", {"ss_output_name": "same"})
    registry = LoraRegistry(tmp_path)
    assert registry.resolve("same") is None
    assert registry.resolve("a").name == "a" and registry.resolve("b").name == "b"


@pytest.mark.parametrize(
    "name", ["../toy", "..", "%2e%2e/toy", "/etc/passwd", "sub/toy", "sub\\toy", "toy\x00", "C:toy", "", " toy"]
)
def test_path_like_names_are_refused(tmp_path, name):
    _write_safetensors(tmp_path / "toy.safetensors")
    registry = LoraRegistry(tmp_path)
    with pytest.raises(GenerationError):
        registry.resolve(name)
    with pytest.raises(GenerationError):
        check_lora_name(name)


def test_symlink_leading_out_of_root_is_skipped(tmp_path):
    outside = _write_safetensors(tmp_path / "outside" / "secret.safetensors")
    root = tmp_path / "loras"
    root.mkdir()
    os.symlink(outside, root / "secret.safetensors")
    os.symlink(tmp_path / "outside", root / "linked_dir")
    _write_safetensors(root / "inside.safetensors")
    registry = LoraRegistry(root)
    assert [e.name for e in registry.entries()] == ["inside"]
    assert registry.resolve("secret") is None
    assert any("outside" in problem for problem in registry.problems)


def test_only_valid_safetensors_are_listed(tmp_path):
    _write_safetensors(tmp_path / "good.safetensors")
    (tmp_path / "pickle.ckpt").write_bytes(b"not loaded")
    (tmp_path / "model.pt").write_bytes(b"not loaded")
    (tmp_path / "broken.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    (tmp_path / "notjson.safetensors").write_bytes(struct.pack("<Q", 4) + b"xxxx")
    bad_offsets = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 999]}}).encode()
    (tmp_path / "truncated.safetensors").write_bytes(struct.pack("<Q", len(bad_offsets)) + bad_offsets + b"ab")
    registry = LoraRegistry(tmp_path)
    assert [e.name for e in registry.entries()] == ["good"]
    assert len(registry.problems) == 3
    with pytest.raises(GenerationError, match="truncated.safetensors"):
        read_safetensors_header(tmp_path / "truncated.safetensors")


def test_miss_rescans_once_and_changed_file_is_rehashed(tmp_path):
    registry = LoraRegistry(tmp_path)
    assert registry.entries() == []
    _write_safetensors(tmp_path / "late.safetensors", payload=b"1111")
    first = registry.resolve("late")
    assert first is not None
    _write_safetensors(tmp_path / "late.safetensors", payload=b"22222222")
    os.utime(tmp_path / "late.safetensors", ns=(first.mtime_ns + 10**9, first.mtime_ns + 10**9))
    assert registry.verify_for_loading(first) == tmp_path / "late.safetensors"
    assert registry.resolve("late").short_hash == hashlib.sha256(b"22222222").hexdigest()[:12]


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(GenerationError, match="--lora-dir"):
        LoraRegistry(tmp_path / "nope")


def test_registry_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, lorapipe.registry; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_corrupt_truncated_pickled_and_oversized_files_are_skipped_with_a_logged_reason(tmp_path, caplog):
    import pickle

    from lorapipe.registry import MAX_LORA_BYTES

    good = _write_safetensors(tmp_path / "good.safetensors", payload=b"\x00" * 64)
    (tmp_path / "truncated.safetensors").write_bytes(good.read_bytes()[:-10])
    (tmp_path / "corrupt.safetensors").write_bytes(os.urandom(4096))
    (tmp_path / "pickled.safetensors").write_bytes(pickle.dumps({"lora_down": [0.0] * 100}))
    with (tmp_path / "huge.safetensors").open("wb") as handle:  # sparse: no disk is used
        handle.truncate(MAX_LORA_BYTES + 1)
    with caplog.at_level("WARNING", logger="lorapipe.registry"):
        registry = LoraRegistry(tmp_path)
    assert [e.name for e in registry.entries()] == ["good"]
    for name in ("truncated", "corrupt", "pickled", "huge"):
        assert registry.resolve(name) is None
        reason = registry.skip_reason(name)
        assert reason and f"{name}.safetensors" in reason
        assert any(reason in record.getMessage() for record in caplog.records)
    assert "truncated" in registry.skip_reason("truncated") and "GiB" in registry.skip_reason("huge")
    caplog.clear()
    registry.refresh()
    assert not caplog.records  # logged once, not on every rescan
