"""Kohya folder rules, captions and `dataset check` on small real folders (exit codes, JSON, per-file problems)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lorapipe.dataset.build import blueprint_from_args, blueprint_from_dataset_config
from lorapipe.dataset.check import check_dataset
from lorapipe.dataset.sample import write_sample_dataset
from lorapipe.dataset.scan import scan_dataset, steps_per_epoch, total_steps
from lorapipe.errors import ConfigError

BASE_ARGS = {
    "resolution": "64,64",
    "enable_bucket": True,
    "min_bucket_reso": 32,
    "max_bucket_reso": 128,
    "bucket_reso_steps": 32,
    "caption_extension": ".txt",
}


def _image(path: Path, size=(64, 64), color=(10, 200, 30), seed=0, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), np.uint8)
    pixels[::2] = color
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "lorapipe", "dataset", "check", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def sample(tmp_path):
    return write_sample_dataset(tmp_path)


def test_sample_dataset_checks_clean_and_json_matches_text(sample):
    text = _cli(sample.parent, "--no-tokens")
    assert text.returncode == 0, text.stdout + text.stderr
    assert "repeats 20, trigger 'dwjz', class 'toy', 12 images, 12 captions" in text.stdout
    result = _cli(sample, "--json")
    assert result.returncode == 0
    report = json.loads(result.stdout)
    (dataset,) = report["datasets"]
    assert dataset["images"] == 12 and dataset["steps_per_epoch"] == 240 and dataset["total_steps"] == 32
    assert sum(b["images"] for b in dataset["buckets"]) == 12
    assert dataset["caption_stats"]["tokens_max"] < 75 and dataset["caption_stats"]["truncated"] == 0
    assert report["errors"] == 0


def test_txt_captions_with_default_extension_fail_loudly(sample):
    config = sample / "kohya-sdxl-config.toml"
    config.write_text(config.read_text().replace('caption_extension = ".txt"', "#caption_extension removed"))
    result = _cli(sample, "--json", "--no-tokens")
    assert result.returncode == 1
    problems = json.loads(result.stdout)["datasets"][0]["problems"]
    errors = [p for p in problems if p["severity"] == "error"]
    assert len(errors) == 1 and errors[0]["path"].endswith("20_dwjz toy")
    assert "12 caption(s) exist as .txt but caption_extension is .caption" in errors[0]["reason"]
    captions = sorted(str(p) for p in (sample / "20_dwjz toy").glob("*.txt"))
    assert sorted(errors[0]["files"]) == captions  # every caption the folder-level error concerns, by name
    text = _cli(sample, "--no-tokens").stdout
    assert all(f"        {Path(c).name}\n" in text for c in captions)


def test_bad_files_are_reported_per_file(sample):
    subset = sample / "20_dwjz toy"
    (subset / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    shutil.copy(subset / "01-sky-gradient-tilt.png", subset / "copy-of-01.png")
    _image(subset / "is-a-png.jpg", fmt="PNG")
    (subset / "notes.gif").write_bytes(b"GIF89a")
    (subset / "01.png.sha256").write_text("0" * 64)  # the store's checksum sidecar: expected, not reported
    (subset / "empty.txt").write_text("")
    _image(subset / "empty.png")
    _image(subset / "tiny.png", size=(16, 16))
    (sample / "photos").mkdir()
    report = check_dataset(sample, count_tokens=False)
    by_file: dict[str, list] = {}
    for p in report.problems:
        by_file.setdefault(Path(p.path).name, []).append((p.severity, p.reason))

    def has(name, severity, text):
        return any(sev == severity and text in reason for sev, reason in by_file.get(name, []))

    assert has("broken.png", "error", "")
    assert has("copy-of-01.png", "warning", "byte-identical")
    assert has("is-a-png.jpg", "warning", "PNG file named .jpg")
    assert has("notes.gif", "warning", "not a training image")
    assert "01.png.sha256" not in by_file
    assert has("empty.txt", "error", "empty")
    assert has("tiny.png", "warning", "below min_bucket_reso")
    assert has("photos", "warning", "<repeats>_<trigger> [class]")
    assert report.has_errors
    # The good images are all still there: nothing was dropped because of its neighbours.
    assert report.datasets[0].images == 12 + 4  # copy, is-a-png, empty (folder-name caption), tiny


def test_images_in_the_wrong_folder_and_missing_folders(tmp_path):
    root = tmp_path / "0001-dataset"
    _image(root / "a.png")
    (root / "kohya-sdxl-config.toml").write_text('resolution = "64,64"\n')
    report = check_dataset(root, count_tokens=False)
    assert report.has_errors
    stray = next(p for p in report.problems if "must be the parent of <repeats>_<name> folders" in p.reason)
    assert stray.files == (str(root / "a.png"),)  # the folder-level problem names the image to move
    empty = tmp_path / "empty" / "0002-dataset"
    (empty / "3_thing").mkdir(parents=True)
    (empty / "kohya-sdxl-config.toml").write_text('resolution = "64,64"\n')
    report = check_dataset(empty, count_tokens=False)
    assert any(p.path.endswith("3_thing") and "no images" in p.reason for p in report.problems)
    result = _cli(tmp_path / "does-not-exist")
    assert result.returncode == 2 and "does-not-exist: dataset folder does not exist" in result.stderr


def test_folder_name_is_the_caption_and_reg_balancing(tmp_path):
    train = tmp_path / "img"
    for n in range(3):
        _image(train / "5_sks dog" / f"{n}.png", seed=n)
    for n in range(4):
        _image(tmp_path / "reg" / "1_dog" / f"{n}.png", seed=10 + n)
    blueprint = blueprint_from_args(
        {
            **BASE_ARGS,
            "train_data_dir": str(train),
            "reg_data_dir": str(tmp_path / "reg"),
            "prior_loss_weight": 0.5,
            "train_batch_size": 2,
        },
        source="test.toml",
    )
    scan = scan_dataset(blueprint)
    train_items = [i for i in scan.items if not i.subset.is_reg]
    assert {i.caption for i in train_items} == {"sks dog"}
    reg = [i for i in scan.items if i.subset.is_reg]
    assert sum(i.repeats for i in reg) == 15  # balanced to 3 images x 5 repeats
    assert [i.repeats for i in reg] == [4, 4, 4, 3]
    assert steps_per_epoch(scan) == 15  # 30 samples, all 64x64, batch 2
    assert total_steps(scan, max_train_epochs=3) == (45, 3)
    assert total_steps(scan, max_train_steps=100, gradient_accumulation_steps=2) == (100, 13)


def test_dataset_config_strict_keys_and_fallbacks(tmp_path):
    _image(tmp_path / "data" / "a.png")
    config = tmp_path / "dataset.toml"
    config.write_text(
        '[general]\ncaption_extension = "txt"\nenable_bucket = true\nbucket_reso_steps = 32\n'
        "min_bucket_reso = 32\nmax_bucket_reso = 128\n"
        "[[datasets]]\nresolution = [64, 64]\nbatch_size = 2\n"
        '[[datasets.subsets]]\nimage_dir = "data"\nclass_tokens = "sks dog"\nnum_repeats = 7\n'
    )
    blueprint = blueprint_from_dataset_config(config, {"prior_loss_weight": 0.3})
    (subset,) = blueprint.subsets
    assert (subset.num_repeats, subset.class_tokens, subset.caption_extension) == (7, "sks dog", ".txt")
    assert blueprint.batch_size == 2 and blueprint.resolution == (64, 64) and blueprint.prior_loss_weight == 0.3
    config.write_text(config.read_text().replace("num_repeats = 7", "num_repeat = 7"))
    with pytest.raises(ConfigError, match=r"dataset.toml: \[\[datasets.subsets\]\] #1: unknown key 'num_repeat'"):
        blueprint_from_dataset_config(config, {})


def test_bucket_steps_not_a_multiple_of_32_round_up_with_a_warning(tmp_path):
    # A kohya_ss GUI preset ships bucket_reso_steps = 1; SDXL needs multiples of 32 (sd-scripts stops on it).
    _image(tmp_path / "1_x" / "a.png")
    blueprint = blueprint_from_args(
        {**BASE_ARGS, "train_data_dir": str(tmp_path), "enable_bucket": True, "bucket_reso_steps": 48},
        source="cfg.toml",
    )
    assert blueprint.bucket_reso_steps == 64
    assert any("bucket_reso_steps = 48" in note.reason and "using 64" in note.reason for note in blueprint.notes)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("max_token_length", 100, "75, 150 or 225"),
        ("enable_bucket", "maybe", "not true/false"),
        ("caption_dropout_rate", 2, "between 0"),
    ],
)
def test_bad_values_name_the_key(tmp_path, key, value, message):
    _image(tmp_path / "1_x" / "a.png")
    with pytest.raises(ConfigError, match=f"cfg.toml: {key}.*{message}|cfg.toml: .*{message}"):
        blueprint_from_args({**BASE_ARGS, "train_data_dir": str(tmp_path), key: value}, source="cfg.toml")


def test_unused_regularization_images_are_named(tmp_path):
    _image(tmp_path / "img" / "1_sks dog" / "0.png")
    for n in range(3):
        _image(tmp_path / "reg" / "1_dog" / f"{n}.png", seed=20 + n)
    blueprint = blueprint_from_args(
        {**BASE_ARGS, "train_data_dir": str(tmp_path / "img"), "reg_data_dir": str(tmp_path / "reg")},
        source="test.toml",
    )
    unused = next(p for p in scan_dataset(blueprint).problems if "not used" in p.reason)
    assert unused.reason.startswith("2 regularization image(s)")
    assert unused.files == tuple(str(tmp_path / "reg" / "1_dog" / f"{n}.png") for n in (1, 2))
