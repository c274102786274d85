"""`lorapipe pipeline run --deploy ENDPOINT`: after publish the endpoint's LoRA set holds the new LoRA, whether the
endpoint serves a model.tar.gz (rebuilt under the run's output, endpoint rolled over) or reads an S3 LoRA prefix
(LoRA uploaded there, no rollover). SageMaker through moto, S3 through SeaweedFS, training played by moto's job."""

from __future__ import annotations

import tarfile
from pathlib import Path

from deploy_fixtures import MOTO_GPU, moto_update_endpoint

from lorapipe.deploy.aws import Aws
from lorapipe.deploy.endpoints import EndpointSpec, create_endpoint
from lorapipe.hosting_contract import build_model_archive
from lorapipe.pipeline.records import RunStore
from lorapipe.pipeline.request import PipelineHome, RunRequest
from lorapipe.pipeline.runner import execute_run
from lorapipe.pipeline.runs import create_run
from lorapipe.pipeline.sagemaker_backend import job_name_for
from lorapipe.store import open_store
from tests import pipeline_fixtures
from tests.pipeline_fixtures import IMAGE, ROLE, fresh_bucket, model_tarball, sagemaker_options

aws = pipeline_fixtures.aws  # the fixture (moto for SageMaker, SeaweedFS for S3), used by name below


def _run_with_deploy(server, dataset: Path, tmp_path: Path, endpoint: str) -> tuple[PipelineHome, str, str]:
    client = server.client()
    data = fresh_bucket(server, "data")
    for path in sorted(dataset.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), data, f"0001-dataset/{path.relative_to(dataset).as_posix()}")
    out = fresh_bucket(server, "out")
    request = RunRequest(
        dataset=f"s3://{data}/0001-dataset",
        output=f"s3://{out}/models",
        backend="sagemaker",
        s3_endpoint_url=server.endpoint_url,
        lora_dir=str(tmp_path / "loras"),
        sagemaker=sagemaker_options(),
        deploy_endpoint=endpoint,
    )
    home = PipelineHome.resolve(tmp_path / "home")
    record = create_run(request, home)
    client.put_object(
        Bucket=out,
        Key=f"models/sagemaker/{job_name_for(record.id)}/output/model.tar.gz",
        Body=model_tarball(tmp_path),
    )
    return home, record.id, out


def _endpoint(server, tmp_path: Path, **spec) -> Aws:
    deploy_aws = Aws("us-east-1", s3_endpoint_url=server.endpoint_url)
    create_endpoint(
        EndpointSpec(name="studio", image=IMAGE, role_arn=ROLE, instance_type=MOTO_GPU, **spec),
        deploy_aws,
        say=lambda _line: None,
        poll_s=0,
    )
    return deploy_aws


def _serving_model(deploy_aws: Aws) -> dict:
    sagemaker = deploy_aws.client("sagemaker")
    config = sagemaker.describe_endpoint_config(
        EndpointConfigName=sagemaker.describe_endpoint(EndpointName="studio")["EndpointConfigName"]
    )
    return sagemaker.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])["PrimaryContainer"]


def test_deploy_rebuilds_the_archive_with_the_new_lora_and_rolls_the_endpoint(aws, sample_dataset_dir, tmp_path):
    server, _ = aws
    models = fresh_bucket(server, "models")
    old_lora = tmp_path / "old.safetensors"
    old_lora.write_bytes(b"an earlier LoRA")
    build_model_archive(
        tmp_path / "model.tar.gz",
        "stabilityai/stable-diffusion-xl-base-1.0",
        {"old": old_lora},
    )
    server.client().upload_file(str(tmp_path / "model.tar.gz"), models, "v1/model.tar.gz")
    with moto_update_endpoint():
        deploy_aws = _endpoint(server, tmp_path, model_data_url=f"s3://{models}/v1/model.tar.gz")
        home, run_id, out = _run_with_deploy(server, sample_dataset_dir, tmp_path, "studio")
        assert execute_run(home, run_id) == "succeeded", RunStore(home.database).get(run_id).error
        container = _serving_model(deploy_aws)
    assert container["ModelDataUrl"] == f"s3://{out}/models/{run_id}/model.tar.gz"
    archive = open_store(f"s3://{out}/models/{run_id}", endpoint_url=server.endpoint_url).fetch_file(
        "model.tar.gz", tmp_path / "new.tar.gz"
    )
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"loras/old.safetensors", "loras/dwjz_toy.safetensors"} <= names
    log = (home.run_dir(run_id) / "run.log").read_text()
    assert "endpoint studio: updating" in log


def test_deploy_to_an_endpoint_with_a_lora_prefix_uploads_without_rollover(aws, sample_dataset_dir, tmp_path):
    server, _ = aws
    loras = fresh_bucket(server, "loras")
    with moto_update_endpoint():
        deploy_aws = _endpoint(
            server,
            tmp_path,
            base_model="stabilityai/stable-diffusion-xl-base-1.0",
            lora_prefix=f"s3://{loras}/published/",
        )
        before = _serving_model(deploy_aws)
        home, run_id, _ = _run_with_deploy(server, sample_dataset_dir, tmp_path, "studio")
        assert execute_run(home, run_id) == "succeeded", RunStore(home.database).get(run_id).error
        assert _serving_model(deploy_aws) == before, "nothing to roll over: instances fetch the LoRA on first use"
    keys = {o["Key"] for o in server.client().list_objects_v2(Bucket=loras)["Contents"]}
    assert keys == {
        "published/dwjz_toy.safetensors",
        "published/dwjz_toy.safetensors.sha256",
    }


def test_deploy_to_a_missing_endpoint_fails_the_run_after_publishing(aws, sample_dataset_dir, tmp_path):
    server, _ = aws
    home, run_id, _ = _run_with_deploy(server, sample_dataset_dir, tmp_path, "nowhere")
    assert execute_run(home, run_id) == "failed"
    error = RunStore(home.database).get(run_id).error
    assert "--deploy nowhere" in error and "published" in error and "not found" in error
    assert (tmp_path / "loras" / "dwjz_toy.safetensors").is_file()
