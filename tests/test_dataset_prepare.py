"""`dataset prepare`: phone photos in, a Kohya dataset folder out, originals untouched, every left-out file named."""

from __future__ import annotations

import hashlib
import os
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lorapipe.cli.main import main
from lorapipe.dataset.check import check_dataset
from lorapipe.dataset.prepare import prepare_dataset
from lorapipe.dataset.preset import PRESET_NAMES, load_preset, plan_schedule, render_config
from lorapipe.errors import ConfigError, DatasetError
from lorapipe.file_names import DATASET_CONFIG_NAME

_EXIF_ORIENTATION = 0x0112


def _pixels(seed: int, size=(96, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _snapshot(folder: Path) -> dict[bytes, str]:
    return {os.fsencode(p.name): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.fixture()
def phone_folder(tmp_path: Path) -> Path:
    """What a phone export looks like: JPEGs, HEIC and AVIF, a rotated photo, junk and odd names."""
    from pillow_heif import register_heif_opener

    register_heif_opener()
    photos = tmp_path / "photos"
    photos.mkdir()
    for n in range(3):
        _pixels(n).save(photos / f"IMG_000{n}.JPG", quality=90)
    _pixels(10).save(photos / "IMG_0100.HEIC")
    _pixels(11).save(photos / "IMG_0101.avif")
    rotated = _pixels(12)
    exif = rotated.getexif()
    exif[_EXIF_ORIENTATION] = 6  # stored 96x64, shown 64x96
    rotated.save(photos / "rotated.jpg", exif=exif, quality=90)
    (photos / "IMG_0000 copy.JPG").write_bytes((photos / "IMG_0000.JPG").read_bytes())
    (photos / "empty.jpg").write_bytes(b"")
    whole = (photos / "IMG_0001.JPG").read_bytes()
    (photos / "cut.jpg").write_bytes(whole[: len(whole) // 2])  # an interrupted copy: header fine, data cut
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 20)
    (photos / "clip.MOV").write_bytes(b"\x00" * 64)
    (photos / "two\nlines.png").write_bytes(_encoded(_pixels(13), "PNG"))
    (photos / os.fsdecode(b"caf\xe9.png")).write_bytes(_encoded(_pixels(14), "PNG"))  # Latin-1 name, not UTF-8
    return photos


def _encoded(image: Image.Image, fmt: str) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_prepare_copies_converts_and_names_what_it_leaves_out(phone_folder, tmp_path):
    before = _snapshot(phone_folder)
    ticks = []
    result = prepare_dataset(
        phone_folder,
        tmp_path / "0001-dataset",
        trigger="sks",
        class_name="dog",
        progress=lambda done, total: ticks.append((done, total)),
    )
    assert _snapshot(phone_folder) == before  # originals never change
    assert ticks[-1] == (len(ticks), len(ticks)) and len(ticks) == 12  # every photo-named file, .MOV excluded

    assert result.dataset_dir == tmp_path / "0001-dataset"
    assert result.subset_dir.name == f"{result.repeats}_sks dog" and result.subset_dir.parent == result.dataset_dir
    kept = {p.target.name: p for p in result.kept}
    assert set(kept) == {
        "IMG_0000.JPG",
        "IMG_0001.JPG",
        "IMG_0002.JPG",
        "IMG_0100.jpg",
        "IMG_0101.jpg",
        "rotated.jpg",
        "two_lines.png",
        "caf_.png",
    }
    assert sorted(p.name for p in result.subset_dir.iterdir()) == sorted(kept)
    assert (result.subset_dir / "IMG_0001.JPG").read_bytes() == (phone_folder / "IMG_0001.JPG").read_bytes()
    assert {p.target.name for p in result.converted} == {"IMG_0100.jpg", "IMG_0101.jpg", "rotated.jpg"}
    assert "HEIF" in kept["IMG_0100.jpg"].note and "AVIF" in kept["IMG_0101.jpg"].note
    with Image.open(result.subset_dir / "IMG_0100.jpg") as converted:
        assert converted.format == "JPEG" and converted.size == (96, 64)
    with Image.open(result.subset_dir / "rotated.jpg") as upright:
        assert upright.size == (64, 96) and upright.getexif().get(_EXIF_ORIENTATION, 1) == 1
    assert "renamed" in kept["two_lines.png"].note

    skipped = {os.fsencode(s.source.name): s.reason for s in result.skipped}
    assert skipped[b"IMG_0000 copy.JPG"] == "byte-identical to IMG_0000.JPG"
    assert "0 bytes" in skipped[b"empty.jpg"]
    assert "truncated" in skipped[b"broken.jpg"]
    assert "not a photo" in skipped[b"clip.MOV"]
    assert "truncated" in skipped[b"cut.jpg"]
    assert len(skipped) == 5

    config = tomllib.loads(result.config_path.read_text(encoding="utf-8"))
    assert config["output_name"] == "sks_dog" and config["max_train_epochs"] == result.epochs
    assert "max_train_steps" not in config  # the budget became repeats x epochs
    assert config["network_dim"] == load_preset("subject").values["network_dim"]
    assert result.repeats * result.epochs * len(kept) == result.expected_steps  # batch size 1
    assert abs(result.expected_steps - 1500) <= 1500 * 0.25
    assert "sks dog" in result.prompts_path.read_text(encoding="utf-8")
    assert not any(p.severity == "error" for p in result.problems)
    assert check_dataset(result.dataset_dir, count_tokens=False).datasets[0].total_steps == result.expected_steps
    assert main(["config", "check", str(result.config_path)]) == 0  # the written config is a valid Kohya config
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


@pytest.mark.parametrize(
    "images, budget, batch, expected",
    [
        (20, 1500, 1, (8, 9)),
        (3, 1500, 1, (50, 10)),
        (300, 1500, 1, (1, 5)),
        (5000, 1500, 1, (1, 1)),
        (20, 1500, 4, (30, 10)),
    ],
)
def test_repeats_and_epochs_land_near_the_budget(images, budget, batch, expected):
    assert plan_schedule(images, budget, batch) == expected


def test_bad_outputs_and_inputs_name_the_path(phone_folder, tmp_path):
    before = _snapshot(phone_folder)
    with pytest.raises(DatasetError, match="inside the photo folder"):
        prepare_dataset(phone_folder, phone_folder, trigger="sks")
    with pytest.raises(DatasetError, match="inside the photo folder"):
        prepare_dataset(phone_folder, phone_folder / "dataset", trigger="sks")
    with pytest.raises(DatasetError, match=f"{tmp_path}: folder is not empty"):
        prepare_dataset(phone_folder, tmp_path, trigger="sks")
    existing = tmp_path / "0001-dataset"
    (existing / "10_sks dog").mkdir(parents=True)
    with pytest.raises(DatasetError, match=f"{existing}: already holds a dataset"):
        prepare_dataset(phone_folder, existing, trigger="sks")
    with pytest.raises(DatasetError, match="one word"):
        prepare_dataset(phone_folder, tmp_path / "new", trigger="my dog")
    with pytest.raises(DatasetError, match=f"{tmp_path / 'nope'}: photo folder does not exist"):
        prepare_dataset(tmp_path / "nope", trigger="sks")
    with pytest.raises(ConfigError, match="no such preset"):
        prepare_dataset(phone_folder, tmp_path / "new", trigger="sks", preset="portrait")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=f"{junk}: no usable photos .*a.jpg: empty file"):
        prepare_dataset(junk, tmp_path / "new", trigger="sks")
    assert _snapshot(phone_folder) == before and not (tmp_path / "new").exists()
    # The default output is the next free NNNN-dataset beside the photos.
    result = prepare_dataset(phone_folder, trigger="sks", preset="face", steps=400)
    assert result.dataset_dir == tmp_path / "0002-dataset" and result.preset == "face"


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_shipped_presets_pass_config_check(name, capsys):
    from importlib import resources

    preset_file = resources.files("lorapipe.dataset").joinpath("presets", f"{name}.toml")
    assert main(["config", "check", str(preset_file)]) == 0
    assert "0 error(s)" in capsys.readouterr().out


def test_render_config_keeps_comments_and_quoted_hashes():
    preset = load_preset("subject")
    text = render_config(preset, {"output_name": 'say "#1"', "max_train_epochs": 7}, drop={"max_train_steps": "budget"})
    values = tomllib.loads(text)
    assert values["output_name"] == 'say "#1"' and values["max_train_epochs"] == 7 and "max_train_steps" not in values
    line = next(line for line in text.splitlines() if line.startswith("output_name"))
    assert line.endswith("#[prepare] the LoRA file is <output_name>.safetensors")


def test_train_on_a_photo_folder_says_how_to_prepare_it(phone_folder, capsys):
    code = main(["train", str(phone_folder), "--base-model", "unused"])
    err = capsys.readouterr().err
    assert code != 0
    assert f"lorapipe dataset prepare {phone_folder} --trigger sks" in err and "preset 'subject'" in err
    assert DATASET_CONFIG_NAME in err


def test_cli_prepare_prints_what_it_did(phone_folder, tmp_path, capsys):
    out = tmp_path / "0007-dataset"
    assert (
        main(
            [
                "dataset",
                "prepare",
                str(phone_folder),
                "--trigger",
                "ohwx",
                "--class",
                "man",
                "--out",
                str(out),
                "--preset",
                "style",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "left out" in text and "broken.jpg" in text and "byte-identical" in text
    assert f"lorapipe dataset caption {out}" in text
    assert tomllib.loads((out / DATASET_CONFIG_NAME).read_text())["shuffle_caption"] is True


def test_a_sectioned_user_preset_is_filled_in_and_points_at_the_photos(phone_folder, tmp_path):
    preset = tmp_path / "mine.toml"
    preset.write_text(
        '[model_arguments]\npretrained_model_name_or_path = "base" # my model\n'
        '[dataset_arguments]\ntrain_data_dir = "/home/me/old-photos"\nresolution = "768,768"\n'
        "[training_arguments]\nmax_train_steps = 800 # my budget\nnetwork_dim = 8\n",
        encoding="utf-8",
    )
    result = prepare_dataset(phone_folder, tmp_path / "0001-dataset", trigger="ohwx", preset=str(preset))
    text = result.config_path.read_text(encoding="utf-8")
    values = {k: v for section in tomllib.loads(text).values() for k, v in section.items()}
    assert "train_data_dir" not in values and "max_train_steps" not in values
    assert (
        values["network_dim"] == 8 and values["output_name"] == "ohwx" and values["max_train_epochs"] == result.epochs
    )
    assert 'pretrained_model_name_or_path = "base" # my model' in text
    assert result.preset == "mine" and abs(result.expected_steps - 800) <= 200
    assert "--w 768 --h 768" in result.prompts_path.read_text(encoding="utf-8")
