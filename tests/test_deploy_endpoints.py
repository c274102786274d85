"""`lorapipe deploy`: the requests SageMaker and Application Auto Scaling get, and whole create/update/delete/invoke
runs against moto (nothing reaches AWS)."""

from __future__ import annotations

import base64
import io
import json
import tarfile

import deploy_fixtures
import pytest
from deploy_fixtures import IMAGE, MOTO_GPU, ROLE
from PIL import Image

from lorapipe.cli.main import main
from lorapipe.deploy.endpoints import (
    EndpointSpec,
    endpoint_config_request,
    fresh_stamp,
    model_request,
    now_stamp,
    stamped_name,
)
from lorapipe.deploy.invoke import is_long_job
from lorapipe.deploy.scaling import (
    BACKLOG_METRIC,
    INVOCATIONS_METRIC,
    NO_CAPACITY_METRIC,
    resource_id,
)
from lorapipe.errors import DeployError
from lorapipe.hosting_contract import BASE_MODEL_ENV, LORA_PREFIX_ENV, MANIFEST_NAME

ARCHIVE = "s3://models/lorapipe/model.tar.gz"
moto_aws = deploy_fixtures.moto_aws  # the fixture, used by name below


def _spec(**changes) -> EndpointSpec:
    values = {
        "name": "studio",
        "image": IMAGE,
        "role_arn": ROLE,
        "model_data_url": ARCHIVE,
    }
    return EndpointSpec(**{**values, **changes})


def test_realtime_requests_carry_the_archive_prefix_and_long_startup():
    spec = _spec(lora_prefix="s3://models/loras", environment=(("LORAPIPE_DTYPE", "bf16"),))
    model = model_request(spec, "20260101-000000")
    container = model["PrimaryContainer"]
    assert model["ModelName"] == "studio-20260101-000000" and model["ExecutionRoleArn"] == ROLE
    assert container["ModelDataUrl"] == ARCHIVE and container["Image"] == IMAGE
    assert container["Environment"] == {
        LORA_PREFIX_ENV: "s3://models/loras/",
        "LORAPIPE_DTYPE": "bf16",
    }
    config = endpoint_config_request(spec, model["ModelName"], "20260101-000000")
    variant = config["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.g5.xlarge" and variant["InitialInstanceCount"] == 1
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] >= 600
    assert "AsyncInferenceConfig" not in config


def test_async_config_has_s3_output_and_sns_topics_and_may_scale_to_zero():
    spec = _spec(
        asynchronous=True,
        min_instances=0,
        max_instances=4,
        async_output="s3://out/studio",
        success_topic="arn:aws:sns:us-east-1:123456789012:ok",
        error_topic="arn:aws:sns:us-east-1:1:bad",
    )
    config = endpoint_config_request(spec, "m", "s")
    output = config["AsyncInferenceConfig"]["OutputConfig"]
    assert (
        output["S3OutputPath"] == "s3://out/studio/results/" and output["S3FailurePath"] == "s3://out/studio/failures/"
    )
    assert output["NotificationConfig"] == {
        "SuccessTopic": spec.success_topic,
        "ErrorTopic": spec.error_topic,
    }
    assert config["ProductionVariants"][0]["InitialInstanceCount"] == 1  # created with one, scaled to zero later


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"min_instances": 0}, "only --async"),
        ({"asynchronous": True, "min_instances": 0}, "--async-output"),
        ({"min_instances": 3, "max_instances": 2}, "min <= max"),
        ({"name": "-bad_name"}, "endpoint name"),
        ({"model_data_url": None}, "--model-data or --base-model"),
        ({"model_data_url": "s3://b/model.zip"}, "model.tar.gz"),
        ({"role_arn": "lorapipe-role"}, "--role"),
    ],
)
def test_impossible_endpoints_are_refused_by_name(changes, words):
    with pytest.raises(DeployError, match=words):
        _spec(**changes)


def test_long_jobs_are_hires_batches_and_many_steps():
    assert not is_long_job({"prompt": "x", "steps": 30})
    assert is_long_job({"enable_hr": True}) and is_long_job({"batch_size": 2}) and is_long_job({"n_iter": 3})
    assert is_long_job({"steps": 80})


def _cli(*args: str) -> int:
    return main(["deploy", *args, "--region", "us-east-1", "--poll", "0"])


def test_realtime_endpoint_create_update_delete_with_invocations_scaling(moto_aws, capsys):
    assert (
        _cli(
            "endpoint",
            "studio",
            "--image",
            IMAGE,
            "--role",
            ROLE,
            "--instance-type",
            MOTO_GPU,
            "--model-data",
            ARCHIVE,
            "--min",
            "1",
            "--max",
            "3",
        )
        == 0
    )
    sagemaker = moto_aws.client("sagemaker")
    endpoint = sagemaker.describe_endpoint(EndpointName="studio")
    assert endpoint["EndpointStatus"] == "InService"
    first_config = endpoint["EndpointConfigName"]
    autoscaling = moto_aws.client("application-autoscaling")
    target = autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"][0]
    assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]) == (
        resource_id("studio"),
        1,
        3,
    )
    policy = autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"][0]
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == INVOCATIONS_METRIC

    assert (
        _cli(
            "update",
            "studio",
            "--model-data",
            "s3://models/lorapipe/v2/model.tar.gz",
            "--max",
            "5",
        )
        == 0
    )
    endpoint = sagemaker.describe_endpoint(EndpointName="studio")
    assert endpoint["EndpointConfigName"] != first_config
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    model = sagemaker.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    assert model["PrimaryContainer"]["ModelDataUrl"] == "s3://models/lorapipe/v2/model.tar.gz"
    assert model["ExecutionRoleArn"] == ROLE and config["ProductionVariants"][0]["InstanceType"] == MOTO_GPU
    assert autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"][0]["MaxCapacity"] == 5
    names = [c["EndpointConfigName"] for c in sagemaker.list_endpoint_configs()["EndpointConfigs"]]
    assert names == [endpoint["EndpointConfigName"]], "the replaced config is cleaned up"

    assert _cli("delete", "studio") == 0
    assert not sagemaker.list_endpoints()["Endpoints"]
    assert not sagemaker.list_endpoint_configs()["EndpointConfigs"] and not sagemaker.list_models()["Models"]
    assert not autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert "endpoint studio deleted" in capsys.readouterr().out


def test_async_endpoint_scales_to_zero_with_the_backlog_alarm(moto_aws):
    sns = moto_aws.client("sns")
    ok, bad = (sns.create_topic(Name=name)["TopicArn"] for name in ("lorapipe-ok", "lorapipe-failed"))
    assert (
        _cli(
            "endpoint",
            "batch",
            "--image",
            IMAGE,
            "--role",
            ROLE,
            "--instance-type",
            MOTO_GPU,
            "--base-model",
            "stabilityai/stable-diffusion-xl-base-1.0",
            "--loras",
            "s3://models/loras/",
            "--async",
            "--async-output",
            "s3://out/batch",
            "--success-topic",
            ok,
            "--error-topic",
            bad,
            "--max",
            "2",
        )
        == 0
    )
    sagemaker = moto_aws.client("sagemaker")
    config = sagemaker.describe_endpoint_config(
        EndpointConfigName=sagemaker.describe_endpoint(EndpointName="batch")["EndpointConfigName"]
    )
    assert config["AsyncInferenceConfig"]["OutputConfig"]["NotificationConfig"] == {
        "SuccessTopic": ok,
        "ErrorTopic": bad,
    }
    model = sagemaker.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    assert "ModelDataUrl" not in model["PrimaryContainer"]
    assert model["PrimaryContainer"]["Environment"][BASE_MODEL_ENV] == "stabilityai/stable-diffusion-xl-base-1.0"
    autoscaling = moto_aws.client("application-autoscaling")
    assert autoscaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"][0]["MinCapacity"] == 0
    policies = {
        p["PolicyType"]: p
        for p in autoscaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    }
    backlog = policies["TargetTrackingScaling"]["TargetTrackingScalingPolicyConfiguration"]
    assert backlog["CustomizedMetricSpecification"]["MetricName"] == BACKLOG_METRIC
    alarm = moto_aws.client("cloudwatch").describe_alarms()["MetricAlarms"][0]
    assert alarm["MetricName"] == NO_CAPACITY_METRIC
    assert alarm["AlarmActions"] == [policies["StepScaling"]["PolicyARN"]]
    assert _cli("delete", "batch") == 0
    assert not moto_aws.client("cloudwatch").describe_alarms()["MetricAlarms"]


def test_missing_endpoint_is_one_clear_line(moto_aws, capsys):
    assert _cli("delete", "nowhere") == 2
    assert "endpoint nowhere: not found" in capsys.readouterr().err


def _a1111_answer() -> bytes:
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(png, format="PNG")
    return json.dumps(
        {
            "images": [base64.b64encode(png.getvalue()).decode()],
            "parameters": {},
            "info": json.dumps({"comments": ""}),
        }
    ).encode()


def test_invoke_async_uploads_the_request_and_saves_the_answer(moto_aws, tmp_path):
    from moto.sagemakerruntime.models import sagemakerruntime_backends

    s3 = moto_aws.client("s3")
    s3.create_bucket(Bucket="out")
    assert (
        _cli(
            "endpoint",
            "batch",
            "--image",
            IMAGE,
            "--role",
            ROLE,
            "--instance-type",
            MOTO_GPU,
            "--model-data",
            ARCHIVE,
            "--async",
            "--async-output",
            "s3://out/batch",
        )
        == 0
    )
    runtime = sagemakerruntime_backends["123456789012"]["us-east-1"]
    runtime.async_results_queue.append((False, _a1111_answer().decode()))  # what the container would write
    assert (
        _cli(
            "invoke",
            "batch",
            "--async",
            "--prompt",
            "a toy <lora:toy:1>",
            "-o",
            str(tmp_path),
        )
        == 0
    )
    request_keys = [o["Key"] for o in s3.list_objects_v2(Bucket="out", Prefix="batch/inputs/")["Contents"]]
    assert len(request_keys) == 1
    sent = json.loads(s3.get_object(Bucket="out", Key=request_keys[0])["Body"].read())
    assert sent["prompt"] == "a toy <lora:toy:1>" and sent["steps"] == 30
    assert Image.open(tmp_path / "batch-00.png").size == (8, 8)

    runtime.async_results_queue.append((True, "CUDA out of memory"))
    assert _cli("invoke", "batch", "--async", "--prompt", "x", "-o", str(tmp_path)) == 2


def test_invoke_realtime_routes_long_jobs_to_the_async_endpoint(moto_aws, tmp_path, capsys):
    from moto.sagemakerruntime.models import sagemakerruntime_backends

    moto_aws.client("s3").create_bucket(Bucket="out")
    for args in (("quick",), ("batch", "--async", "--async-output", "s3://out/batch")):
        assert (
            _cli(
                "endpoint",
                *args,
                "--image",
                IMAGE,
                "--role",
                ROLE,
                "--instance-type",
                MOTO_GPU,
                "--model-data",
                ARCHIVE,
            )
            == 0
        )
    runtime = sagemakerruntime_backends["123456789012"]["us-east-1"]
    runtime.results_queue.append((_a1111_answer().decode(), "application/json", "AllTraffic", ""))
    assert (
        _cli(
            "invoke",
            "quick",
            "--async-endpoint",
            "batch",
            "--prompt",
            "x",
            "-o",
            str(tmp_path),
        )
        == 0
    )
    assert (tmp_path / "quick-00.png").is_file()
    runtime.async_results_queue.append((False, _a1111_answer().decode()))
    request = tmp_path / "hires.json"
    request.write_text(json.dumps({"prompt": "x", "enable_hr": True}))
    assert (
        _cli(
            "invoke",
            "quick",
            "--async-endpoint",
            "batch",
            "--json",
            str(request),
            "-o",
            str(tmp_path),
        )
        == 0
    )
    assert "sent asynchronously to batch" in capsys.readouterr().out
    assert (tmp_path / "batch-00.png").is_file()


def test_package_builds_an_archive_the_hosting_reader_accepts(tmp_path, capsys):
    from lorapipe.hosting_contract import unpack_model_archive

    lora = tmp_path / "toy.safetensors"
    lora.write_bytes(b"not read by the packer")
    archive = tmp_path / "model.tar.gz"
    assert (
        main(
            [
                "deploy",
                "package",
                "--base-model",
                "s3://models/sdxl-base/",
                "--lora",
                f"{lora}=dwjz",
                "--lora-prefix",
                "s3://models/loras",
                "-o",
                str(archive),
            ]
        )
        == 0
    )
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == [MANIFEST_NAME, "loras/dwjz.safetensors"]
    hosted = unpack_model_archive(archive, tmp_path / "model")
    assert hosted.base_model == "s3://models/sdxl-base/" and set(hosted.loras) == {"dwjz"}
    assert hosted.lora_prefix == "s3://models/loras/"
    assert (
        main(
            [
                "deploy",
                "package",
                "--base-model",
                "x",
                "--lora",
                f"{lora}=../up",
                "-o",
                str(archive),
            ]
        )
        == 2
    )
    assert "path character" in capsys.readouterr().err


def test_update_names_never_reuse_the_names_the_endpoint_serves_from():
    # An update in the same clock tick as the deploy must not reuse (and then delete) the live config's name.
    live = stamped_name("studio", now_stamp())
    stamp = fresh_stamp("studio", {live})
    assert stamped_name("studio", stamp) != live
    assert len(stamped_name("a" * 63, stamp)) <= 63
