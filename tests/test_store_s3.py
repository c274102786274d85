"""The store against a real S3 server (SeaweedFS on 127.0.0.1): list, cached fetch, atomic upload, clear errors."""

import hashlib
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from lorapipe.dataset.sample import write_sample_dataset
from lorapipe.errors import StoreError
from lorapipe.store import MANIFEST_NAME, open_store

pytestmark = pytest.mark.s3


@pytest.fixture
def s3_env(seaweed_s3, monkeypatch):  # noqa: F811
    for key, value in seaweed_s3.env().items():
        monkeypatch.setenv(key, value)
    return seaweed_s3


@pytest.fixture(scope="module")
def shared_bucket(seaweed_s3):  # noqa: F811
    """One bucket per module: SeaweedFS allocates volumes per bucket, so tests use prefixes instead."""
    bucket = f"lp-{uuid.uuid4().hex[:10]}"
    seaweed_s3.client().create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def bucket_with_dataset(s3_env, shared_bucket, tmp_path):
    """`(bucket/prefix, local copy)`: the sample dataset under <prefix>/0001-dataset/ in the shared bucket."""
    prefix = f"{shared_bucket}/t-{uuid.uuid4().hex[:8]}"
    client = s3_env.client()
    local = write_sample_dataset(tmp_path / "src")
    for path in sorted(local.rglob("*")):
        if path.is_file():
            key = f"{prefix.split('/', 1)[1]}/0001-dataset/{path.relative_to(local).as_posix()}"
            client.upload_file(str(path), shared_bucket, key)
    return prefix, local


def test_list_and_fetch_with_cache_reuse(bucket_with_dataset, tmp_path):
    bucket, local = bucket_with_dataset
    store = open_store(f"s3://{bucket}")
    assert store.list_datasets() == ["0001-dataset"]
    cache = tmp_path / "cache"
    first = store.fetch_dataset_with_stats("0001-dataset", cache)
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert first.downloaded == len(files) and first.reused == 0
    for rel in files:
        assert (first.path / rel).read_bytes() == (local / rel).read_bytes()
    assert (first.path / MANIFEST_NAME).is_file()

    # Change one remote file and damage one cached file: exactly those two are downloaded again.
    client = open_store(f"s3://{bucket}")._fs
    client.pipe_file(f"{bucket}/0001-dataset/20_dwjz toy/01-sky-gradient-tilt.txt", b"dwjz toy, changed\n")
    damaged = first.path / "20_dwjz toy" / "02-checkered-floor-tilt.png"
    damaged.write_bytes(b"not the original")
    second = store.fetch_dataset_with_stats("0001-dataset", cache)
    assert second.downloaded == 2 and second.reused == len(files) - 2
    assert (second.path / "20_dwjz toy" / "01-sky-gradient-tilt.txt").read_text() == "dwjz toy, changed\n"
    assert damaged.read_bytes() == (local / "20_dwjz toy" / "02-checkered-floor-tilt.png").read_bytes()
    assert [p.name for p in cache.iterdir()] == ["0001-dataset"]  # no staging leftovers


def test_upload_is_whole_with_sha256_sidecar(s3_env, shared_bucket, tmp_path):
    bucket = shared_bucket
    artifact = tmp_path / "dwjz_toy.safetensors"
    artifact.write_bytes(bytes(range(256)) * 4096)
    store = open_store(f"s3://{bucket}/runs/r1")
    url = store.upload_file(artifact, "model/dwjz_toy.safetensors")
    assert url == f"s3://{bucket}/runs/r1/model/dwjz_toy.safetensors"
    assert store.read_bytes("model/dwjz_toy.safetensors") == artifact.read_bytes()
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert store.read_bytes("model/dwjz_toy.safetensors.sha256").decode().split() == [digest, artifact.name]
    keys = [o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket, Prefix="runs/r1/")["Contents"]]
    assert sorted(keys) == ["runs/r1/model/dwjz_toy.safetensors", "runs/r1/model/dwjz_toy.safetensors.sha256"]
    store.delete("model/dwjz_toy.safetensors")
    assert not store.exists("model/dwjz_toy.safetensors")
    assert not store.exists("model/dwjz_toy.safetensors.sha256")


def test_sidecar_mismatch_is_refused_and_cache_untouched(bucket_with_dataset, tmp_path):
    bucket, _ = bucket_with_dataset
    fs = open_store(f"s3://{bucket}")._fs
    fs.pipe_file(f"{bucket}/0001-dataset/kohya-sdxl-config.toml.sha256", b"0" * 64 + b"  x\n")
    cache = tmp_path / "cache"
    with pytest.raises(StoreError, match="does not match"):
        open_store(f"s3://{bucket}").fetch_dataset("0001-dataset", cache)
    assert list(cache.iterdir()) == []


def test_missing_bucket_and_wrong_credentials(s3_env, monkeypatch, tmp_path):
    with pytest.raises(StoreError, match=r"s3://no-such-bucket-lp: bucket does not exist"):
        open_store("s3://no-such-bucket-lp/datasets").list_datasets()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(StoreError, match="access denied"):
        open_store("s3://any-bucket/datasets").list_datasets()


def test_unreachable_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    with pytest.raises(StoreError, match="cannot reach"):
        open_store("s3://bucket/x", endpoint_url="http://127.0.0.1:9").list_datasets()


def test_cli_check_on_bucket(bucket_with_dataset, s3_env, tmp_path):
    bucket, _ = bucket_with_dataset
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lorapipe",
            "dataset",
            "check",
            f"s3://{bucket}",
            "--json",
            "--no-tokens",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--s3-endpoint",
            s3_env.endpoint_url,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    import json

    report = json.loads(result.stdout)
    (dataset,) = report["datasets"]
    assert dataset["path"] == f"s3://{bucket}/0001-dataset"
    assert dataset["images"] == 12 and dataset["captions"] == 12
    assert all(p["path"].startswith("s3://") for p in report["datasets"][0]["problems"])
    assert Path(tmp_path / "cache").is_dir()


def test_fetch_file_reuses_an_intact_copy_refetches_a_republished_one_and_checks_the_sidecar(
    s3_env, shared_bucket, tmp_path
):
    store = open_store(f"s3://{shared_bucket}/loras-{uuid.uuid4().hex[:8]}")
    source = tmp_path / "toy.safetensors"
    source.write_bytes(b"first version")
    store.upload_file(source, "toy.safetensors")
    target = tmp_path / "cache" / "toy.safetensors"
    assert store.fetch_file("toy.safetensors", target).read_bytes() == b"first version"
    stamp = target.stat().st_mtime_ns
    store.fetch_file("toy.safetensors", target)
    assert target.stat().st_mtime_ns == stamp, "same version, intact copy: not downloaded again"

    source.write_bytes(b"second version")
    store.upload_file(source, "toy.safetensors")  # republished under the same name
    assert store.fetch_file("toy.safetensors", target).read_bytes() == b"second version"

    store._fs.pipe_file(store._path("toy.safetensors"), b"tampered")  # bytes no longer match the .sha256
    with pytest.raises(StoreError, match="does not match its .sha256"):
        store.fetch_file("toy.safetensors", target)
    assert target.read_bytes() == b"second version", "a failed fetch leaves the previous copy whole"
    with pytest.raises(StoreError, match="not found"):
        store.fetch_file("nope.safetensors", tmp_path / "cache" / "nope.safetensors")
