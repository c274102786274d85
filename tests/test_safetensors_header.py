"""The one safetensors header reader: real files from safetensors' own writer, and every way a file can be broken."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save, save_file

from lorapipe.errors import ModelLoadError
from lorapipe.safetensors_header import MAX_HEADER_BYTES, parse_header, read_header

TENSORS = {
    "lora_unet_a.lora_down.weight": np.arange(8, dtype=np.float32).reshape(2, 4),
    "lora_unet_a.lora_up.weight": np.ones((4, 2), np.float16),
    "lora_unet_a.alpha": np.array(2.0, np.float32),
}
METADATA = {"ss_network_dim": "2", "ss_output_name": "toy"}


def _raw(header: object, data: bytes = b"") -> bytes:
    """A safetensors file built by hand: length prefix, JSON header, data area."""
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


@pytest.fixture
def real_file(tmp_path):
    path = tmp_path / "toy.safetensors"
    save_file(TENSORS, str(path), metadata=METADATA)
    return path


def test_reads_what_safetensors_wrote(real_file):
    header = read_header(real_file)
    assert dict(header.metadata) == METADATA
    assert header.file_size == real_file.stat().st_size
    with safe_open(real_file, "np") as handle:
        assert set(header.tensors) == set(handle.keys())
        for name in handle.keys():
            entry = header.tensors[name]
            begin, end = entry.offsets
            assert entry.dtype == {"float32": "F32", "float16": "F16"}[str(TENSORS[name].dtype)]
            assert entry.shape == TENSORS[name].shape
            # The offsets index the data area: the bytes there are the tensor itself.
            raw = real_file.read_bytes()[header.data_offset + begin : header.data_offset + end]
            np.testing.assert_array_equal(
                np.frombuffer(raw, TENSORS[name].dtype).reshape(entry.shape), handle.get_tensor(name)
            )


def test_bytes_and_file_readers_agree(real_file):
    assert parse_header(real_file.read_bytes(), real_file) == read_header(real_file)
    assert parse_header(save(TENSORS, metadata=METADATA), "in memory").tensors == read_header(real_file).tensors


def test_header_is_frozen(real_file):
    header = read_header(real_file)
    with pytest.raises(TypeError):
        header.metadata["ss_network_dim"] = "8"
    with pytest.raises(AttributeError):
        header.data_offset = 0


def test_file_without_metadata_has_empty_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file(TENSORS, str(path))
    assert dict(read_header(path).metadata) == {}


@pytest.mark.parametrize("cut", [0, 5, 8, 30, -1])
def test_truncated_file_is_refused_naming_it(real_file, cut):
    real_file.write_bytes(real_file.read_bytes()[:cut])
    with pytest.raises(ModelLoadError, match=r"toy\.safetensors: not a readable \.safetensors file"):
        read_header(real_file)


def test_cut_inside_the_data_says_truncated(real_file):
    real_file.write_bytes(real_file.read_bytes()[:-4])
    with pytest.raises(ModelLoadError, match="lies outside the .*truncated"):
        read_header(real_file)


def test_length_past_the_file_is_refused(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(ModelLoadError, match=f"bad.safetensors: .*header length {1 << 40} does not fit"):
        read_header(path)


def test_length_over_the_cap_is_refused_before_reading_it(tmp_path):
    path = tmp_path / "huge.safetensors"
    with path.open("wb") as handle:  # sparse: the length fits the file, only the cap refuses it
        handle.write(struct.pack("<Q", MAX_HEADER_BYTES + 1))
        handle.truncate(MAX_HEADER_BYTES + 64)
    with pytest.raises(ModelLoadError, match=f"huge.safetensors: .*header length {MAX_HEADER_BYTES + 1} is over the"):
        read_header(path)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (struct.pack("<Q", 10) + b"not json!!", "header is not JSON"),
        (struct.pack("<Q", 2) + b"\xff\xfe", "header is not JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (_raw({"__metadata__": {"steps": 10}}), "__metadata__ must map strings to strings"),
        (_raw({"__metadata__": ["a"]}), "__metadata__ must map strings to strings"),
        (_raw({"w": {"dtype": "F32", "shape": [1]}}), "'w' needs dtype, shape and data_offsets"),
        (_raw({"w": [1, 2]}), "'w' needs dtype, shape and data_offsets"),
        (_raw({"w": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "unknown dtype 'F33'"),
        (_raw({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "malformed shape"),
        (_raw({"w": {"dtype": "F32", "shape": ["1"], "data_offsets": [0, 4]}}, b"\0" * 4), "malformed shape"),
        (_raw({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4]}}, b"\0" * 4), "malformed data_offsets"),
        (_raw({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 999]}}, b"ab"), "bytes 0..999"),
        (_raw({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4), "lies outside"),
    ],
    ids=[
        "not-json",
        "not-utf8",
        "not-object",
        "metadata-int",
        "metadata-list",
        "no-offsets",
        "entry-not-object",
        "unknown-dtype",
        "negative-dim",
        "string-dim",
        "one-offset",
        "offsets-past-end",
        "offsets-reversed",
    ],
)
def test_broken_headers_are_refused_naming_the_file(tmp_path, content, problem):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=problem) as file_error:
        read_header(path)
    assert str(file_error.value).startswith(f"{path}: ") and "\n" not in str(file_error.value)
    with pytest.raises(ModelLoadError, match=problem) as bytes_error:
        parse_header(content, "in-memory LoRA")
    assert str(bytes_error.value).startswith("in-memory LoRA: ")


def test_remedy_ends_the_message(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelLoadError, match="; pass an SDXL model$"):
        read_header(path, remedy="pass an SDXL model")


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ModelLoadError, match="missing.safetensors: cannot read"):
        read_header(tmp_path / "missing.safetensors")


def test_reading_a_header_does_not_import_torch(real_file):
    code = (
        "import sys; from lorapipe.safetensors_header import read_header; "
        f"read_header({str(real_file)!r}); print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert result.stdout.strip() == "False"
