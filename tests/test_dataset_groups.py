"""A dataset_config with several [[datasets]] tables (sd-scripts' DatasetGroup): each table keeps its own
resolution, buckets and batch size; batches never mix tables; steps per epoch add up; training runs on both."""

from __future__ import annotations

import json

import pytest

from lorapipe.config import load_train_config
from lorapipe.dataset.batches import epoch_batches
from lorapipe.dataset.scan import scan_dataset, steps_per_epoch
from lorapipe.errors import ConfigError
from lorapipe.train.run import run_training
from tests.train_fixtures import SUBSET, one_thread  # noqa: F401 (autouse fixture)


def _two_tables(sample_dataset_dir, tmp_path):
    """The same photos at 64 px in batches of 2 and at 32 px in batches of 1, plus a 2-repeat subset at 32 px."""
    toml = tmp_path / "datasets.toml"
    image_dir = sample_dataset_dir / SUBSET
    toml.write_text(f"""[general]
caption_extension = ".txt"
enable_bucket = true
bucket_reso_steps = 32
min_bucket_reso = 32
max_bucket_reso = 128

[[datasets]]
resolution = 64
batch_size = 2
  [[datasets.subsets]]
  image_dir = "{image_dir}"
  num_repeats = 3

[[datasets]]
resolution = 32
batch_size = 1
max_bucket_reso = 64
  [[datasets.subsets]]
  image_dir = "{image_dir}"
  num_repeats = 2
""")
    return toml


def _config(sample_dataset_dir, tmp_path, *overrides):
    toml = _two_tables(sample_dataset_dir, tmp_path)
    return load_train_config(
        sample_dataset_dir,
        overrides=(f"dataset_config={toml}", *overrides),
        output_dir=tmp_path / "out",
        base_model="unused",
    ).config


def test_each_table_keeps_its_resolution_and_batch_size(sample_dataset_dir, tmp_path):
    blueprint = _config(sample_dataset_dir, tmp_path).dataset
    tables = blueprint.datasets()
    assert [t.resolution for t in tables] == [(64, 64), (32, 32)]
    assert [t.batch_size for t in tables] == [2, 1]
    scan = scan_dataset(blueprint)
    assert not scan.has_errors
    by_table = {0: [], 1: []}
    for item in scan.items:
        by_table[item.subset.dataset_index].append(item)
    assert len(by_table[0]) == len(by_table[1]) == 12  # the same photos, once per table
    assert all(w * h <= 64 * 64 for i in by_table[0] for w, h in [i.bucket])
    assert all(w * h <= 32 * 32 for i in by_table[1] for w, h in [i.bucket])
    assert max(w * h for i in by_table[0] for w, h in [i.bucket]) > 32 * 32

    batches = epoch_batches(scan, blueprint, 1, seed=0)
    for batch in batches:
        tables_in = {i.subset.dataset_index for i in batch}
        assert len(tables_in) == 1 and len({i.bucket for i in batch}) == 1
        assert len(batch) <= (2 if tables_in == {0} else 1)
    assert len(batches) == steps_per_epoch(scan)
    assert sum(len(b) for b in batches) == 12 * 3 + 12 * 2
    assert {i.subset.dataset_index for b in batches[:12] for i in b} == {0, 1}  # shuffled together


def test_an_empty_second_table_is_named(sample_dataset_dir, tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text(f"""[[datasets]]\nresolution = 64
  [[datasets.subsets]]\n  image_dir = "{sample_dataset_dir / SUBSET}"
[[datasets]]\nresolution = 32\n""")
    with pytest.raises(ConfigError, match=r"\[\[datasets\]\] #2 has no \[\[datasets.subsets\]\]"):
        load_train_config(
            sample_dataset_dir, overrides=(f"dataset_config={toml}",), output_dir=tmp_path / "o", base_model="unused"
        )


def test_training_on_two_tables(tiny_model_dir, sample_dataset_dir, tmp_path):
    toml = _two_tables(sample_dataset_dir, tmp_path)
    result = run_training(
        sample_dataset_dir,
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "out",
        overrides=(
            f"dataset_config={toml}",
            "max_train_steps=4",
            "seed=1",
            'sample_prompts=""',
            "sample_every_n_steps=0",
        ),
        show_progress=False,
        step_lines=False,
    )
    summary = json.loads(result.summary_path.read_text())
    assert summary["steps_done"] == 4 and result.lora_path.is_file()
    assert summary["batches_per_epoch"] == 18 + 24  # 36 samples at 64 px in twos (even per bucket) + 24 singles


def test_dataset_config_runs_write_ss_datasets(tiny_model_dir, sample_dataset_dir, tmp_path):
    from safetensors import safe_open

    toml = _two_tables(sample_dataset_dir, tmp_path)
    result = run_training(
        sample_dataset_dir,
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "out",
        overrides=(
            f"dataset_config={toml}",
            "max_train_steps=1",
            "seed=1",
            'sample_prompts=""',
            "sample_every_n_steps=0",
        ),
        show_progress=False,
        step_lines=False,
    )
    with safe_open(str(result.lora_path), "pt") as f:
        meta = f.metadata()
    tables = json.loads(meta["ss_datasets"])
    assert [t["resolution"] for t in tables] == [[64, 64], [32, 32]]
    assert [t["batch_size_per_device"] for t in tables] == [2, 1]
    assert [t["num_train_images"] for t in tables] == [36, 24]
    assert [t["subsets"][0]["num_repeats"] for t in tables] == [3, 2]
    assert tables[0]["subsets"][0]["image_dir"] == SUBSET and tables[0]["subsets"][0]["img_count"] == 12
    assert "ss_resolution" not in meta  # folder-mode keys are not written in dataset_config mode, as sd-scripts
