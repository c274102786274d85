"""The publish step: verified artifacts only, manifest last, LoRA folder touched only after every upload."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest

from lorapipe.errors import PipelineError, StoreError
from lorapipe.pipeline.artifact import check_safetensors, copy_artifact, find_artifact
from lorapipe.pipeline.publish import publish_artifact
from lorapipe.pipeline.runlog import RunLog
from tests.pipeline_fixtures import write_artifact


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def log(tmp_path):
    run_log = RunLog(tmp_path / "run.log")
    yield run_log
    run_log.close()


def test_artifact_is_found_and_fingerprinted(tmp_path):
    artifact = find_artifact(write_artifact(tmp_path / "train"))
    assert artifact.lora.name == "dwjz_toy.safetensors"
    assert [p.name for p in artifact.samples] == ["dwjz_toy_00.png", "dwjz_toy_01.png"]
    assert artifact.sha256["dwjz_toy.safetensors"] == _sha(artifact.lora)
    assert artifact.files[-1] == artifact.lora, "the LoRA is uploaded after everything else"
    assert check_safetensors(artifact.lora) == {"ss_output_name": "dwjz_toy"}


@pytest.mark.parametrize("cut", [4, 20, -10])
def test_truncated_lora_is_refused(tmp_path, cut):
    folder = write_artifact(tmp_path / "train")
    lora = folder / "dwjz_toy.safetensors"
    data = lora.read_bytes()
    lora.write_bytes(data[:cut])
    with pytest.raises(PipelineError, match="dwjz_toy.safetensors"):
        find_artifact(folder)


def test_zero_or_two_loras_is_an_error(tmp_path):
    with pytest.raises(PipelineError, match="found none"):
        find_artifact(tmp_path)
    folder = write_artifact(tmp_path / "train")
    (folder / "other.safetensors").write_bytes((folder / "dwjz_toy.safetensors").read_bytes())
    with pytest.raises(PipelineError, match=r"LoRAs of several runs \(dwjz_toy, other\)"):
        find_artifact(folder)


def test_copy_of_a_cached_artifact_is_verified(tmp_path):
    source = find_artifact(write_artifact(tmp_path / "old"))
    copied = copy_artifact(source, tmp_path / "new")
    assert copied.sha256 == source.sha256 and copied.folder == tmp_path / "new"


def test_publish_to_a_folder_and_the_lora_dir(tmp_path, log):
    artifact = find_artifact(write_artifact(tmp_path / "train"))
    manifest = publish_artifact(
        artifact,
        run_id="run-1",
        output_url=str(tmp_path / "out"),
        lora_dir=tmp_path / "loras",
        lora_name="my-toy",
        endpoint_url=None,
        log=log,
    )
    published = tmp_path / "out" / "run-1"
    for name in ("dwjz_toy.safetensors", "train_summary.json", "sample/dwjz_toy_00.png", "publish.json"):
        assert (published / name).is_file(), name
        assert (published / f"{name}.sha256").read_text().split()[0] == _sha(published / name)
    assert json.loads((published / "publish.json").read_text())["sha256"] == artifact.sha256
    assert _sha(tmp_path / "loras" / "my-toy.safetensors") == _sha(artifact.lora)
    assert manifest["lora_path"] == str(tmp_path / "loras" / "my-toy.safetensors")
    assert manifest["registry"]["name"] == "my-toy" and len(manifest["registry"]["sha256_tensors"]) == 64
    assert (artifact.folder / "dwjz_toy.safetensors.sha256").is_file(), "sidecars in the run folder too"
    assert not [p for p in (tmp_path / "loras").iterdir() if p.name != "my-toy.safetensors"], "no temp files left"


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "", "C:\\x"])
def test_lora_names_must_be_plain(tmp_path, log, name):
    artifact = find_artifact(write_artifact(tmp_path / "train"))
    with pytest.raises(StoreError, match="--lora-name"):
        publish_artifact(
            artifact,
            run_id="r",
            output_url=None,
            lora_dir=tmp_path / "loras",
            lora_name=name,
            endpoint_url=None,
            log=log,
        )
    assert not (tmp_path / "loras").exists()


def test_failed_upload_publishes_nothing(tmp_path, log, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    artifact = find_artifact(write_artifact(tmp_path / "train"))
    with pytest.raises(StoreError, match="s3://bucket/models"):
        publish_artifact(
            artifact,
            run_id="r",
            output_url="s3://bucket/models",
            lora_dir=tmp_path / "loras",
            lora_name="toy",
            endpoint_url="http://127.0.0.1:9",
            log=log,
        )
    assert not (tmp_path / "loras").exists(), "the server never sees a LoRA whose upload failed"


def test_upload_failing_midway_is_rolled_back(seaweed_s3, tmp_path, log, monkeypatch):  # noqa: F811
    """Samples and summary go up, then the LoRA upload fails: what went up is taken back."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed_s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed_s3.secret_key)
    bucket = f"pub-{uuid.uuid4().hex[:8]}"
    client = seaweed_s3.client()
    client.create_bucket(Bucket=bucket)
    folder = write_artifact(tmp_path / "train")
    artifact = find_artifact(folder)
    # The LoRA vanishes between verification and upload (a disk or cleanup fault): upload of the last file fails.
    artifact.lora.unlink()
    with pytest.raises(StoreError):
        publish_artifact(
            artifact,
            run_id="r",
            output_url=f"s3://{bucket}/models",
            lora_dir=tmp_path / "loras",
            lora_name="toy",
            endpoint_url=seaweed_s3.endpoint_url,
            log=log,
        )
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0, "partial upload removed"
    assert not (tmp_path / "loras").exists()
