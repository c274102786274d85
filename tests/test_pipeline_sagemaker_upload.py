"""A local dataset with the sagemaker backend: checked locally, uploaded to a content-addressed prefix under
--output (SeaweedFS), and trained from there (moto's CreateTrainingJob); unchanged content is not uploaded again,
changed content never overwrites an earlier upload, and a dataset with problems never leaves the machine."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import time
from pathlib import Path

import pytest

from lorapipe.pipeline.dataset_upload import MANIFEST_SUFFIX, upload_dataset, upload_name
from lorapipe.pipeline.hashing import ContentHasher, content_files
from lorapipe.pipeline.records import RunStore
from lorapipe.pipeline.request import PipelineHome, RunRequest
from lorapipe.pipeline.runlog import RunLog
from lorapipe.pipeline.runner import execute_run
from lorapipe.pipeline.runs import create_run
from lorapipe.pipeline.sagemaker_backend import job_name_for
from tests.pipeline_fixtures import aws, fresh_bucket, model_tarball, sagemaker_options  # noqa: F401


@pytest.fixture
def local_dataset(tmp_path, sample_dataset_dir) -> Path:
    """A private copy of the sample dataset (tests change it)."""
    return Path(shutil.copytree(sample_dataset_dir, tmp_path / "datasets" / "0001-dataset"))


def _request(server, dataset: Path, out: str, tmp_path: Path) -> RunRequest:
    return RunRequest(
        dataset=str(dataset),
        output=f"s3://{out}/models",
        backend="sagemaker",
        s3_endpoint_url=server.endpoint_url,
        lora_dir=str(tmp_path / "loras"),
        sagemaker=sagemaker_options(),
    )


def _objects(server, bucket: str, prefix: str) -> dict[str, tuple]:
    """key -> (LastModified, ETag) of every object under prefix."""
    found = {}
    for page in server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = (item["LastModified"], item["ETag"])
    return found


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_local_dataset_is_uploaded_once_and_the_job_reads_the_upload(aws, local_dataset, tmp_path):
    server, sagemaker = aws
    out = fresh_bucket(server, "out")
    home = PipelineHome.resolve(tmp_path / "home")
    record = create_run(_request(server, local_dataset, out, tmp_path), home)
    server.client().put_object(
        Bucket=out, Key=f"models/sagemaker/{job_name_for(record.id)}/output/model.tar.gz", Body=model_tarball(tmp_path)
    )

    assert execute_run(home, record.id) == "succeeded", RunStore(home.database).get(record.id).error
    prefix = f"models/datasets/{upload_name(local_dataset, ContentHasher().folder(local_dataset))}/"
    channel_url = f"s3://{out}/{prefix}"
    job = sagemaker.describe_training_job(TrainingJobName=job_name_for(record.id))
    assert job["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == channel_url
    client = server.client()
    for path in content_files(local_dataset):
        key = prefix + path.relative_to(local_dataset).as_posix()
        body = client.get_object(Bucket=out, Key=key)["Body"].read()
        sidecar = client.get_object(Bucket=out, Key=key + ".sha256")["Body"].read().decode().split()[0]
        assert _sha(body) == sidecar == _sha(path.read_bytes()), key
    assert "kohya-sdxl-config.toml" in {Path(k).name for k in _objects(server, out, prefix)}
    finished = RunStore(home.database).get(record.id)
    assert channel_url in finished.steps[0].detail, "the uploaded URL is part of the run record"
    assert "upload: done" in (home.run_dir(record.id) / "run.log").read_text()

    # A second run of the same folder finds the upload complete and sends nothing.
    before = _objects(server, out, "models/datasets/")
    time.sleep(1.1)  # LastModified has one-second resolution: a re-upload would show
    again = create_run(_request(server, local_dataset, out, tmp_path), home)
    assert execute_run(home, again.id) == "succeeded", RunStore(home.database).get(again.id).error
    assert _objects(server, out, "models/datasets/") == before
    assert "nothing to upload" in (home.run_dir(again.id) / "run.log").read_text()
    assert channel_url in RunStore(home.database).get(again.id).steps[0].detail


def test_changed_dataset_gets_a_new_prefix_and_a_cut_short_upload_resumes(
    seaweed_s3, local_dataset, tmp_path, monkeypatch
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed_s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed_s3.secret_key)
    out = fresh_bucket(seaweed_s3, "out")
    hasher = ContentHasher(RunStore(tmp_path / "runs.sqlite"))
    log = RunLog(tmp_path / "run.log")
    upload = dict(output_url=f"s3://{out}/models", hasher=hasher, endpoint_url=seaweed_s3.endpoint_url, log=log)
    first = upload_dataset(local_dataset, **upload)
    assert first.uploaded == len(content_files(local_dataset)) and first.unchanged == 0
    old_objects = _objects(seaweed_s3, out, first.url.split("/", 3)[3])

    caption = next(local_dataset.rglob("*.txt"))
    caption.write_text(caption.read_text() + ", changed")
    time.sleep(1.1)
    second = upload_dataset(local_dataset, **upload)
    assert second.url != first.url and second.uploaded == len(content_files(local_dataset))
    assert _objects(seaweed_s3, out, first.url.split("/", 3)[3]) == old_objects, "earlier upload left untouched"

    # Cut the second upload short: no completion manifest and one file missing; only that file is sent again.
    client = seaweed_s3.client()
    second_prefix = second.url.split("/", 3)[3]
    client.delete_object(Bucket=out, Key=second_prefix.rstrip("/") + MANIFEST_SUFFIX)
    client.delete_object(Bucket=out, Key=second_prefix + caption.relative_to(local_dataset).as_posix())
    resumed = upload_dataset(local_dataset, **upload)
    assert (resumed.url, resumed.uploaded, resumed.unchanged) == (second.url, 1, second.uploaded - 1)
    body = client.get_object(Bucket=out, Key=second_prefix + caption.relative_to(local_dataset).as_posix())["Body"]
    assert body.read() == caption.read_bytes()
    log.close()


def test_dataset_with_problems_is_refused_before_any_upload(aws, local_dataset, tmp_path):
    server, sagemaker = aws
    (local_dataset / "20_dwjz toy" / "03-green-meadow-tilt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    out = fresh_bucket(server, "out")
    home = PipelineHome.resolve(tmp_path / "home")
    record = create_run(_request(server, local_dataset, out, tmp_path), home)
    assert execute_run(home, record.id) == "failed"
    failed = RunStore(home.database).get(record.id)
    assert "dataset check failed" in failed.error and "03-green-meadow-tilt.png" in failed.error
    assert [s.status for s in failed.steps] == ["failed", "pending", "pending", "pending", "pending"]
    assert server.client().list_objects_v2(Bucket=out).get("KeyCount", 0) == 0, "nothing uploaded"
    assert sagemaker.list_training_jobs()["TrainingJobSummaries"] == []


def test_an_explicit_config_travels_as_the_config_channel(aws, local_dataset, tmp_path):
    """--config beside the dataset's own TOML: uploaded under --output/configs/ and given to the job as the
    `config` channel (the container's entry point prefers it), instead of being left behind."""
    server, sagemaker = aws
    out = fresh_bucket(server, "cfg")
    config = tmp_path / "my-run.toml"
    config.write_text('max_train_steps = 7\nresolution = "64,64"\ncaption_extension = ".txt"\n')
    home = PipelineHome.resolve(tmp_path / "home")
    request = _request(server, local_dataset, out, tmp_path)
    record = create_run(dataclasses.replace(request, config=str(config)), home)
    server.client().put_object(
        Bucket=out, Key=f"models/sagemaker/{job_name_for(record.id)}/output/model.tar.gz", Body=model_tarball(tmp_path)
    )
    assert execute_run(home, record.id) == "succeeded", RunStore(home.database).get(record.id).error
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
        for c in sagemaker.describe_training_job(TrainingJobName=job_name_for(record.id))["InputDataConfig"]
    }
    prefix = f"models/configs/{_sha(config.read_bytes())[:12]}/"
    assert channels["config"] == f"s3://{out}/{prefix}"
    body = server.client().get_object(Bucket=out, Key=prefix + "kohya-sdxl-config.toml")["Body"].read()
    assert body == config.read_bytes()
