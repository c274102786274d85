"""Run records (SQLite) and content hashing: the cache key follows bytes, not paths or mtimes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lorapipe.errors import PipelineError
from lorapipe.pipeline.hashing import ContentHasher, train_cache_key
from lorapipe.pipeline.records import RunStore, new_run_id


def _make(store: RunStore, tmp_path: Path, dataset: str = "/data/0001-dataset") -> str:
    run_id = new_run_id()
    store.create_run(
        run_id, backend="local", dataset=dataset, output=None, run_dir=tmp_path / run_id, request={"dataset": dataset}
    )
    return run_id


def test_run_lifecycle_and_steps(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = _make(store, tmp_path)
    record = store.get(run_id)
    assert record.status == "queued" and not record.finished
    assert [step.name for step in record.steps] == ["validate", "train", "evaluate", "sample", "publish"]
    assert store.start_run(run_id, os.getpid())
    assert not store.start_run(run_id, os.getpid()), "a running run cannot be started twice"
    store.set_step(run_id, "validate", "running")
    store.set_step(run_id, "validate", "succeeded", "12 images")
    assert store.finish_run(run_id, "failed", "boom")
    assert not store.finish_run(run_id, "succeeded"), "a finished run keeps its final status"
    record = store.get(run_id)
    assert record.status == "failed" and record.error == "boom"
    validate = record.steps[0]
    assert validate.status == "succeeded" and validate.detail == "12 images"
    assert validate.finished >= validate.started


def test_cancelled_before_start_never_runs(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = _make(store, tmp_path)
    store.finish_run(run_id, "cancelled")
    assert not store.start_run(run_id, 1)


def test_lookup_by_unique_part_and_errors(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    first, second = _make(store, tmp_path), _make(store, tmp_path)
    assert store.get(first[-6:]).id == first
    with pytest.raises(PipelineError, match="no run"):
        store.get("does-not-exist")
    with pytest.raises(PipelineError, match="2 runs"):
        store.get(first[:8])  # both ids share the date prefix
    assert {r.id for r in store.list_runs()} == {first, second}


def test_find_cached_needs_a_successful_train_step(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    old, new = _make(store, tmp_path), _make(store, tmp_path)
    store.update_run(old, cache_key="k1", artifact_dir=tmp_path / "art")
    assert store.find_cached("k1", exclude_run=new) is None, "train step not finished yet"
    store.set_step(old, "train", "succeeded")
    assert store.find_cached("k1", exclude_run=new).id == old
    assert store.find_cached("k2", exclude_run=new) is None
    assert store.find_cached("k1", exclude_run=old) is None


def test_store_is_shared_across_connections(tmp_path):
    """The CLI and a detached worker open the same file; each sees the other's writes."""
    a = RunStore(tmp_path / "runs.sqlite")
    b = RunStore(tmp_path / "runs.sqlite")
    run_id = _make(a, tmp_path)
    b.set_step(run_id, "train", "running")
    assert a.get(run_id).steps[1].status == "running"


def _dataset(root: Path) -> Path:
    subset = root / "0001-dataset" / "10_dwjz toy"
    subset.mkdir(parents=True)
    (subset / "a.png").write_bytes(b"\x89PNG fake but bytes are what is hashed")
    (subset / "a.txt").write_text("dwjz toy, smiling")
    (root / "0001-dataset" / "kohya-sdxl-config.toml").write_text("network_dim = 4\n")
    return root / "0001-dataset"


def test_folder_hash_follows_content_not_path_or_mtime(tmp_path):
    hasher = ContentHasher(RunStore(tmp_path / "runs.sqlite"))
    original = _dataset(tmp_path / "a")
    digest = hasher.folder(original)
    moved = shutil.copytree(original, tmp_path / "b" / "elsewhere")
    assert hasher.folder(moved) == digest, "same bytes elsewhere: same hash"
    os.utime(moved / "10_dwjz toy" / "a.txt", (1, 1))
    assert hasher.folder(moved) == digest, "touching a file changes nothing"
    (moved / "10_dwjz toy" / "a.txt.sha256").write_text("sidecar")
    (moved / ".lorapipe-manifest.json").write_text("{}")
    assert hasher.folder(moved) == digest, "sidecars and hidden files are not content"
    (moved / "10_dwjz toy" / "a.txt").write_text("dwjz toy, frowning")
    assert hasher.folder(moved) != digest, "a changed caption is a changed dataset"
    (moved / "10_dwjz toy" / "a.txt").write_text("dwjz toy, smiling")
    (moved / "10_dwjz toy" / "a.txt").rename(moved / "10_dwjz toy" / "b.txt")
    assert hasher.folder(moved) != digest, "a renamed file is a changed dataset"


def test_file_hash_is_remembered_by_size_and_mtime(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    hasher = ContentHasher(store)
    path = tmp_path / "model.bin"
    path.write_bytes(b"x" * 1000)
    digest = hasher.file(path)
    stat = path.stat()
    assert store.cached_file_hash(str(path.resolve()), stat.st_size, stat.st_mtime_ns) == digest
    path.write_bytes(b"y" * 1000)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000))
    assert hasher.file(path) != digest, "a new mtime means hashing again"


def test_hub_ids_hash_by_name_and_cache_key_covers_every_input(tmp_path):
    hasher = ContentHasher()
    assert hasher.path_or_name("org/model-a") != hasher.path_or_name("org/model-b")
    base = dict(dataset_hash="d", config_hash="c", base_model_hash="m", overrides=("a=1",), trainer_version="v")
    key = train_cache_key(**base)
    assert train_cache_key(**{**base, "overrides": ("a=1",)}) == key
    for field, value in (
        ("dataset_hash", "d2"),
        ("config_hash", None),
        ("base_model_hash", "m2"),
        ("overrides", ("a=2",)),
        ("trainer_version", "v2"),
    ):
        assert train_cache_key(**{**base, field: value}) != key, field
