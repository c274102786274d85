"""The sample dataset: Kohya layout, deterministic bytes, captions and sizes the tiny model can train on."""

import hashlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from PIL import Image

from lorapipe.dataset.sample import write_sample_dataset
from lorapipe.errors import DatasetError


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_layout_config_and_captions(tmp_path):
    dataset = write_sample_dataset(tmp_path)
    assert dataset == tmp_path / "0001-dataset"
    config = tomllib.loads((dataset / "kohya-sdxl-config.toml").read_text())
    assert config["caption_extension"] == ".txt"
    assert config["resolution"] == "64,64"
    assert config["bucket_reso_steps"] % 32 == 0
    subset = dataset / "20_dwjz toy"
    images = sorted(subset.glob("*.png"))
    assert 10 <= len(images) <= 14
    aspect_ratios = set()
    for image_path in images:
        with Image.open(image_path) as image:
            assert image.mode == "RGB"
            assert min(image.size) >= config["min_bucket_reso"]
            assert max(image.size) <= 160
            aspect_ratios.add(round(image.width / image.height, 2))
        caption = image_path.with_suffix(".txt").read_text().splitlines()[0]
        assert caption.startswith("dwjz toy, ")
    assert len(aspect_ratios) >= 3  # landscapes, portraits and squares


def test_deterministic_and_refuses_overwrite(tmp_path):
    first = write_sample_dataset(tmp_path / "a")
    second = write_sample_dataset(tmp_path / "b")
    assert _digest(first) == _digest(second)
    with pytest.raises(DatasetError, match="already exists"):
        write_sample_dataset(tmp_path / "a")
    assert write_sample_dataset(tmp_path / "a", overwrite=True) == first
    assert not list((tmp_path / "a").glob(".*tmp*"))


def test_cli_make_sample(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lorapipe", "dataset", "make-sample", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == tmp_path / "0001-dataset"
    assert (tmp_path / "0001-dataset" / "kohya-sdxl-config.toml").is_file()
