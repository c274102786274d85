"""SageMaker backend: the CreateTrainingJob request, a whole run against moto (SageMaker API) and SeaweedFS (S3),
and the failures that must leave a failed run with its reason and nothing published."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lorapipe.errors import PipelineError
from lorapipe.pipeline.backend import TrainJob
from lorapipe.pipeline.records import RunStore
from lorapipe.pipeline.request import PipelineHome, RunRequest
from lorapipe.pipeline.runner import execute_run
from lorapipe.pipeline.runs import create_run
from lorapipe.pipeline.sagemaker_backend import SageMakerBackend, job_name_for
from lorapipe.pipeline.sagemaker_definition import RECIPE_PARAMETERS, pipeline_definition
from tests.pipeline_fixtures import IMAGE, ROLE, aws, fresh_bucket, model_tarball, sagemaker_options  # noqa: F401

_options = sagemaker_options


def _job(tmp_path: Path, dataset_url: str = "s3://bucket/0001-dataset") -> TrainJob:
    return TrainJob(
        "20260101-000000-abcdef",
        tmp_path / "ds",
        dataset_url,
        tmp_path / "train",
        "/models/tiny",
        None,
        ("max_train_steps=2", "learning_rate=0.001"),
        "f" * 64,
    )


def test_job_request_has_the_recipe_knobs_and_the_missing_ones(tmp_path):
    request = RunRequest(
        dataset="s3://bucket/0001-dataset",
        output="s3://bucket/models/",
        backend="sagemaker",
        sagemaker=_options(spot=True, instance_type="ml.g5.2xlarge", volume_size_gb=80, max_runtime_s=3600),
    )
    arguments = SageMakerBackend(request).job_request(_job(tmp_path), "c" * 64)
    channel = arguments["InputDataConfig"][0]
    assert channel["ChannelName"] == "train"
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == "s3://bucket/0001-dataset/", "trailing slash added"
    assert arguments["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert arguments["RoleArn"] == ROLE
    assert arguments["ResourceConfig"] == {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 80}
    assert arguments["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert arguments["EnableManagedSpotTraining"] is True
    assert arguments["CheckpointConfig"] == {
        "S3Uri": "s3://bucket/models/checkpoints/" + "f" * 16 + "/",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert arguments["OutputDataConfig"]["S3OutputPath"] == "s3://bucket/models/sagemaker/"
    assert all(isinstance(v, str) for v in arguments["HyperParameters"].values())
    assert arguments["HyperParameters"] == {
        "max_train_steps": "2",
        "learning_rate": "0.001",
        "pretrained_model_name_or_path": "/models/tiny",
    }
    assert arguments["Environment"]["LORAPIPE_CONTENT_SHA256"] == "c" * 64
    assert len(arguments["TrainingJobName"]) <= 63


def test_job_request_refuses_incomplete_settings(tmp_path):
    base = dict(dataset="s3://bucket/0001-dataset", output="s3://bucket/models", backend="sagemaker")
    with pytest.raises(PipelineError, match="--sagemaker-image"):
        SageMakerBackend(RunRequest(**base, sagemaker=_options(image=None))).job_request(_job(tmp_path))
    with pytest.raises(PipelineError, match="--sagemaker-role"):
        SageMakerBackend(RunRequest(**base, sagemaker=_options(role_arn=None))).job_request(_job(tmp_path))
    with pytest.raises(PipelineError, match="--max-wait-s"):
        SageMakerBackend(
            RunRequest(**base, sagemaker=_options(spot=True, max_wait_s=10, max_runtime_s=100))
        ).job_request(_job(tmp_path))
    with pytest.raises(PipelineError, match="--output"):
        RunRequest(dataset="/local/0001-dataset", output="/local/models", backend="sagemaker")
    assert RunRequest(dataset="/local/0001-dataset", output="s3://b/m", backend="sagemaker").uploads_dataset
    assert not RunRequest(dataset="s3://b/0001-dataset/", output="s3://b/m", backend="sagemaker").uploads_dataset


def test_pipelines_definition_keeps_the_recipe_parameter_names():
    definition = pipeline_definition(role_arn=ROLE)
    names = [p["Name"] for p in definition["Parameters"]]
    for name in (
        "InputS3DatasetLocation",
        "OutputS3ModelLocation",
        "TrainingDockerImage",
        "TrainingInstanceType",
        "TrainingVolumeSizeInGB",
        "MaxTrainingRuntimeInSeconds",
    ):
        assert name in names
    assert len(RECIPE_PARAMETERS) == 6
    step = definition["Steps"][0]
    assert step["Type"] == "Training"
    assert step["Arguments"]["ResourceConfig"]["VolumeSizeInGB"] == {"Get": "Parameters.TrainingVolumeSizeInGB"}
    assert "SageMaker.CAPACITY_ERROR" in step["RetryPolicies"][0]["ExceptionType"]
    dataset_default = next(p for p in definition["Parameters"] if p["Name"] == "InputS3DatasetLocation")
    assert dataset_default["DefaultValue"].endswith("/")
    json.dumps(definition)  # serialisable as PipelineDefinitionBody


# -- moto (SageMaker API) + SeaweedFS (S3) ---------------------------------------------------------------------------
_bucket = fresh_bucket


def _upload_dataset(server, dataset_dir: Path) -> str:
    client = server.client()
    bucket = _bucket(server, "data")
    for path in sorted(dataset_dir.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"0001-dataset/{path.relative_to(dataset_dir).as_posix()}")
    return f"s3://{bucket}/0001-dataset"


def _sagemaker_request(server, dataset_url: str, tmp_path: Path, out: str = "unused", **changes) -> RunRequest:
    return RunRequest(
        dataset=dataset_url,
        output=f"s3://{out}/models",
        backend="sagemaker",
        s3_endpoint_url=server.endpoint_url,
        lora_dir=str(tmp_path / "loras"),
        sagemaker=_options(),
        **changes,
    )


def test_sagemaker_run_trains_fetches_verifies_and_publishes(aws, sample_dataset_dir, tmp_path):
    server, sagemaker = aws
    dataset_url = _upload_dataset(server, sample_dataset_dir)
    out = _bucket(server, "out")
    home = PipelineHome.resolve(tmp_path / "home")
    record = create_run(_sagemaker_request(server, dataset_url, tmp_path, out), home)
    # Play SageMaker's part: the job's model.tar.gz appears where DescribeTrainingJob says it is.
    job_name = job_name_for(record.id)
    server.client().put_object(
        Bucket=out, Key=f"models/sagemaker/{job_name}/output/model.tar.gz", Body=model_tarball(tmp_path)
    )

    # ... and the container's log lines appear in CloudWatch, where the backend follows them.
    import boto3

    logs = boto3.client("logs", region_name="us-east-1")
    logs.create_log_group(logGroupName="/aws/sagemaker/TrainingJobs")
    logs.create_log_stream(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=f"{job_name}/algo-1-1700000000")
    logs.put_log_events(
        logGroupName="/aws/sagemaker/TrainingJobs",
        logStreamName=f"{job_name}/algo-1-1700000000",
        logEvents=[{"timestamp": int(time.time() * 1000), "message": "step=1 loss=0.512300 lr=0.001"}],
    )

    assert execute_run(home, record.id) == "succeeded", RunStore(home.database).get(record.id).error
    job = sagemaker.describe_training_job(TrainingJobName=job_name)
    assert job["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == dataset_url + "/"
    assert job["HyperParameters"] == {}
    assert job["CheckpointConfig"]["S3Uri"].startswith(f"s3://{out}/models/checkpoints/")

    keys = {o["Key"] for o in server.client().list_objects_v2(Bucket=out, Prefix=f"models/{record.id}/")["Contents"]}
    for name in (
        "dwjz_toy.safetensors",
        "dwjz_toy.safetensors.sha256",
        "train_summary.json",
        "publish.json",
        "sample/dwjz_toy_00.png",
    ):
        assert f"models/{record.id}/{name}" in keys
    assert (tmp_path / "loras" / "dwjz_toy.safetensors").is_file()
    log = (home.run_dir(record.id) / "run.log").read_text()
    assert f"SageMaker job {job_name} created" in log
    assert "step=1 loss=0.512300 lr=0.001" in log, "CloudWatch lines copied into the run log"
    assert (
        RunStore(home.database).get(record.id).steps[3].status == "succeeded"
    )  # samples came with the model (after validate, train, evaluate)


def test_missing_model_artifact_fails_the_run_and_publishes_nothing(aws, sample_dataset_dir, tmp_path):
    server, _ = aws
    dataset_url = _upload_dataset(server, sample_dataset_dir)
    out = _bucket(server, "out")
    home = PipelineHome.resolve(tmp_path / "home")
    record = create_run(_sagemaker_request(server, dataset_url, tmp_path, out), home)
    assert execute_run(home, record.id) == "failed"
    failed = RunStore(home.database).get(record.id)
    assert "cannot download the job's model" in failed.error
    assert [s.status for s in failed.steps] == ["succeeded", "failed", "pending", "pending", "pending"]
    listing = server.client().list_objects_v2(Bucket=out, Prefix=f"models/{record.id}/")
    assert listing.get("KeyCount", 0) == 0
    assert not (tmp_path / "loras").exists()


def test_refused_job_fails_the_run_with_the_reason(aws, sample_dataset_dir, tmp_path):
    """A server that answers CreateTrainingJob with an error (here SeaweedFS: AccessDenied) is a refusal."""
    server, _ = aws
    dataset_url = _upload_dataset(server, sample_dataset_dir)
    out = _bucket(server, "out")
    home = PipelineHome.resolve(tmp_path / "home")
    request = _sagemaker_request(server, dataset_url, tmp_path, out)
    request = RunRequest.from_json(
        {**request.to_json(), "sagemaker": {**request.to_json()["sagemaker"], "endpoint_url": server.endpoint_url}}
    )
    record = create_run(request, home)
    assert execute_run(home, record.id) == "failed"
    failed = RunStore(home.database).get(record.id)
    assert "training job was refused" in failed.error and "AccessDenied" in failed.error
    assert failed.steps[1].status == "failed"
    assert server.client().list_objects_v2(Bucket=out).get("KeyCount", 0) == 0
    assert not (tmp_path / "loras").exists()


def test_missing_credentials_fail_the_run_with_the_reason(
    seaweed_s3,
    sample_dataset_dir,
    tmp_path,  # noqa: F811
    monkeypatch,
):
    dataset_url = _upload_dataset(seaweed_s3, sample_dataset_dir)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    home = PipelineHome.resolve(tmp_path / "home")
    record = create_run(
        RunRequest(dataset=dataset_url, output=str(tmp_path / "out"), s3_endpoint_url=seaweed_s3.endpoint_url), home
    )
    assert execute_run(home, record.id) == "failed"
    failed = RunStore(home.database).get(record.id)
    assert failed.steps[0].status == "failed" and dataset_url.split("/")[2] in failed.error
    assert not (tmp_path / "out").exists()


def test_unreachable_store_fails_in_validate(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    home = PipelineHome.resolve(tmp_path / "home")
    request = RunRequest(
        dataset="s3://nowhere/0001-dataset/",
        output="s3://nowhere/models",
        backend="sagemaker",
        s3_endpoint_url="http://127.0.0.1:9",
        sagemaker=_options(),
    )
    record = create_run(request, home)
    assert execute_run(home, record.id) == "failed"
    failed = RunStore(home.database).get(record.id)
    assert failed.steps[0].status == "failed" and "s3://nowhere" in failed.error


def test_pipeline_definition_is_created_then_updated(monkeypatch):
    moto = pytest.importorskip("moto")
    from lorapipe.pipeline.sagemaker_definition import upsert_pipeline

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with moto.mock_aws():
        import boto3

        first = upsert_pipeline("lorapipe-recipe", ROLE, region="us-east-1")
        pipeline_role = "arn:aws:iam::123456789012:role/lorapipe-pipeline"
        again = upsert_pipeline("lorapipe-recipe", ROLE, pipeline_role_arn=pipeline_role, region="us-east-1")
        assert first == again and first.endswith("pipeline/lorapipe-recipe")
        stored = boto3.client("sagemaker", region_name="us-east-1").describe_pipeline(PipelineName="lorapipe-recipe")
        definition = json.loads(stored["PipelineDefinition"])
        assert {p["Name"] for p in definition["Parameters"]} >= {name for name, _, _ in RECIPE_PARAMETERS}
        assert stored["RoleArn"] == pipeline_role, "the update replaced the pipeline's role"
        role_parameter = next(p for p in definition["Parameters"] if p["Name"] == "ExecutionRoleArn")
        assert role_parameter["DefaultValue"] == ROLE
