"""SageMaker endpoints serving the lorapipe image: create (model, endpoint config, endpoint, autoscaling), update
(a new model and endpoint config, then UpdateEndpoint: SageMaker starts the new instances, shifts traffic once they
pass /ping and retires the old ones, so no request is dropped) and delete.

Every resource name carries a UTC time stamp, so an update never has to change a resource in place. The request
builders are pure functions; the three operations call AWS through `lorapipe.deploy.aws.Aws`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from lorapipe.deploy.aws import Aws, aws_reason, is_not_found
from lorapipe.deploy.scaling import (
    DIMENSION,
    NAMESPACE,
    VARIANT,
    Scaling,
    apply_scaling,
    policy_names,
    remove_scaling,
    resource_id,
)
from lorapipe.errors import DeployError
from lorapipe.hosting_contract import BASE_MODEL_ENV, LORA_PREFIX_ENV

_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
STARTUP_HEALTH_CHECK_S = 900  # SageMaker's wait for the first /ping 200: an SDXL load from S3 takes minutes
MODEL_DOWNLOAD_S = 1800
FINAL_STATES = frozenset({"InService", "Failed", "OutOfService"})
Say = Callable[[str], None]


@dataclass(frozen=True)
class EndpointSpec:
    """What `lorapipe deploy endpoint` was asked for. Real-time keeps >= 1 instance; async may scale to zero."""

    name: str
    image: str
    role_arn: str
    instance_type: str = "ml.g5.xlarge"
    min_instances: int = 1
    max_instances: int = 1
    model_data_url: str | None = None  # s3://.../model.tar.gz from `lorapipe deploy package`
    base_model: str | None = None  # without model data: $LORAPIPE_BASE_MODEL
    lora_prefix: str | None = None  # $LORAPIPE_LORA_PREFIX: LoRAs fetched at request time
    asynchronous: bool = False
    async_output: str | None = None  # s3:// prefix for async results (and failures/)
    success_topic: str | None = None  # SNS topic ARNs for async notifications
    error_topic: str | None = None
    target: float | None = None  # invocations/instance/minute (real-time), waiting requests/instance (async)
    environment: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        check_endpoint_name(self.name)
        if not self.image:
            raise DeployError("--image: the endpoint needs the lorapipe image URI (ECR); see container/")
        if not self.role_arn.startswith("arn:"):
            raise DeployError(f"--role {self.role_arn!r}: give the SageMaker execution role ARN; see deploy/")
        if not (self.model_data_url or self.base_model):
            raise DeployError(
                "--model-data or --base-model: the endpoint needs a model.tar.gz "
                "(`lorapipe deploy package`) or a base model location"
            )
        if self.model_data_url and not (
            self.model_data_url.startswith("s3://") and self.model_data_url.endswith(".tar.gz")
        ):
            raise DeployError(f"--model-data {self.model_data_url}: give the s3:// URL of a model.tar.gz")
        if self.lora_prefix and not self.lora_prefix.startswith("s3://"):
            raise DeployError(f"--loras {self.lora_prefix}: give an s3:// prefix of .safetensors LoRAs")
        lowest = 0 if self.asynchronous else 1
        if not lowest <= self.min_instances <= self.max_instances or self.max_instances < 1:
            raise DeployError(
                f"--min {self.min_instances} --max {self.max_instances}: need {lowest} <= min <= max "
                f"and max >= 1{'' if self.asynchronous else ' (only --async endpoints scale to zero)'}"
            )
        if self.asynchronous and not (self.async_output or "").startswith("s3://"):
            raise DeployError("--async-output: an asynchronous endpoint writes results to S3; give s3://BUCKET/PREFIX/")

    @property
    def scaling(self) -> Scaling:
        default = 2.0 if self.asynchronous else 10.0  # ~5 s per SDXL image: 10/min keeps one GPU about busy
        return Scaling(self.min_instances, self.max_instances, self.target or default)


def check_endpoint_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise DeployError(f"endpoint name {name!r}: use 1-63 letters, digits and hyphens (no leading hyphen)")
    return name


def stamped_name(name: str, stamp: str) -> str:
    return f"{name[: 62 - len(stamp)].rstrip('-')}-{stamp}"


def now_stamp() -> str:
    """UTC time to the millisecond: a deploy and an update in the same second still get distinct names."""
    now = time.time()
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"-{int(now * 1000) % 1000:03d}"


def fresh_stamp(name: str, taken: set[str]) -> str:
    """A stamp whose model/config name is not one of `taken` (the names the endpoint serves from right now)."""
    stamp = now_stamp()
    while stamped_name(name, stamp) in taken:
        time.sleep(0.001)
        stamp = now_stamp()
    return stamp


def model_request(spec: EndpointSpec, stamp: str) -> dict:
    environment = dict(spec.environment)
    if spec.base_model:
        environment[BASE_MODEL_ENV] = spec.base_model
    if spec.lora_prefix:
        environment[LORA_PREFIX_ENV] = spec.lora_prefix if spec.lora_prefix.endswith("/") else spec.lora_prefix + "/"
    container = {"Image": spec.image, "Mode": "SingleModel", "Environment": environment}
    if spec.model_data_url:
        container["ModelDataUrl"] = spec.model_data_url
    return {
        "ModelName": stamped_name(spec.name, stamp),
        "ExecutionRoleArn": spec.role_arn,
        "PrimaryContainer": container,
    }


def endpoint_config_request(spec: EndpointSpec, model_name: str, stamp: str) -> dict:
    variant = {
        "VariantName": VARIANT,
        "ModelName": model_name,
        "InstanceType": spec.instance_type,
        "InitialInstanceCount": max(1, spec.min_instances),
        "InitialVariantWeight": 1.0,
        "ContainerStartupHealthCheckTimeoutInSeconds": STARTUP_HEALTH_CHECK_S,
        "ModelDataDownloadTimeoutInSeconds": MODEL_DOWNLOAD_S,
    }
    request = {
        "EndpointConfigName": stamped_name(spec.name, stamp),
        "ProductionVariants": [variant],
    }
    if spec.asynchronous:
        output = spec.async_output.rstrip("/")
        notify = {
            key: arn
            for key, arn in (
                ("SuccessTopic", spec.success_topic),
                ("ErrorTopic", spec.error_topic),
            )
            if arn
        }
        request["AsyncInferenceConfig"] = {
            "OutputConfig": {
                "S3OutputPath": f"{output}/results/",
                "S3FailurePath": f"{output}/failures/",
                **({"NotificationConfig": notify} if notify else {}),
            },
            # One GPU renders one image at a time; more in flight would only queue inside the container.
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 1},
        }
    return request


# -- operations ------------------------------------------------------------------------------------------------------


def create_endpoint(spec: EndpointSpec, aws: Aws, *, say: Say = print, poll_s: float = 30.0) -> dict:
    """Model -> endpoint config -> endpoint; once InService, the autoscaling policy (it needs a live variant)."""
    sagemaker = aws.client("sagemaker")
    stamp = now_stamp()
    model = model_request(spec, stamp)
    config = endpoint_config_request(spec, model["ModelName"], stamp)
    try:
        sagemaker.create_model(**model)
        say(f"model {model['ModelName']} created")
        sagemaker.create_endpoint_config(**config)
        say(
            f"endpoint config {config['EndpointConfigName']} created "
            f"({spec.instance_type}, {'asynchronous' if spec.asynchronous else 'real-time'})"
        )
        sagemaker.create_endpoint(EndpointName=spec.name, EndpointConfigName=config["EndpointConfigName"])
    except Exception as exc:
        raise DeployError(
            f"endpoint {spec.name}: SageMaker refused it ({aws_reason(exc)}); check the role, image, "
            "instance quota and region"
        ) from exc
    say(f"endpoint {spec.name} creating")
    result = {
        "endpoint": spec.name,
        "model": model["ModelName"],
        "endpoint_config": config["EndpointConfigName"],
    }
    wait_in_service(aws, spec.name, say=say, poll_s=poll_s)
    try:
        result["scaling"] = apply_scaling(aws, spec.name, spec.scaling, asynchronous=spec.asynchronous)
    except Exception as exc:
        raise DeployError(
            f"endpoint {spec.name}: in service, but autoscaling was refused ({aws_reason(exc)}); "
            "check the caller's application-autoscaling and cloudwatch permissions"
        ) from exc
    for line in result["scaling"]:
        say(line)
    return result


def wait_in_service(
    aws: Aws,
    name: str,
    *,
    say: Say = print,
    poll_s: float = 30.0,
    timeout_s: float = 3600.0,
) -> dict:
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        description = describe_endpoint(aws, name)
        status = description["EndpointStatus"]
        if status != last:
            say(f"endpoint {name}: {status}")
            last = status
        if status in FINAL_STATES:
            break
        if time.monotonic() > deadline:
            raise DeployError(f"endpoint {name}: still {status} after {timeout_s:g} s; see the SageMaker console")
        time.sleep(poll_s)
    if status != "InService":
        reason = description.get("FailureReason") or "no reason given"
        raise DeployError(
            f"endpoint {name}: {status} ({reason}); the container log is in CloudWatch /aws/sagemaker/Endpoints/{name}"
        )
    return description


def describe_endpoint(aws: Aws, name: str) -> dict:
    try:
        return aws.client("sagemaker").describe_endpoint(EndpointName=check_endpoint_name(name))
    except Exception as exc:
        if is_not_found(exc):
            raise DeployError(
                f"endpoint {name}: not found in this account and region; check the name and --region"
            ) from exc
        raise DeployError(f"endpoint {name}: cannot read it ({aws_reason(exc)})") from exc


@dataclass(frozen=True)
class EndpointChange:
    """What `lorapipe deploy update` changes; None keeps the current value."""

    model_data_url: str | None = None
    lora_prefix: str | None = None
    image: str | None = None
    min_instances: int | None = None
    max_instances: int | None = None


def update_endpoint(
    aws: Aws,
    name: str,
    change: EndpointChange,
    *,
    say: Say = print,
    poll_s: float = 30.0,
) -> dict:
    """A new model and endpoint config from the current ones with `change`, then UpdateEndpoint.

    Instance counts are kept (RetainAllVariantProperties) so autoscaling's current count survives; the old model
    and config are deleted once the endpoint is back in service."""
    sagemaker = aws.client("sagemaker")
    endpoint = describe_endpoint(aws, name)
    if endpoint["EndpointStatus"] != "InService":
        raise DeployError(f"endpoint {name}: {endpoint['EndpointStatus']}; an update needs it InService")
    old_config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    old_model_name = old_config["ProductionVariants"][0]["ModelName"]
    old_model = sagemaker.describe_model(ModelName=old_model_name)
    container = dict(old_model["PrimaryContainer"])
    environment = dict(container.get("Environment") or {})
    if change.model_data_url:
        container["ModelDataUrl"] = change.model_data_url
    if change.lora_prefix:
        environment[LORA_PREFIX_ENV] = (
            change.lora_prefix if change.lora_prefix.endswith("/") else change.lora_prefix + "/"
        )
    if change.image:
        container["Image"] = change.image
    container["Environment"] = environment
    # The old model and config are deleted after the switch, so the new names must differ from them.
    stamp = fresh_stamp(name, {old_config["EndpointConfigName"], old_model_name})
    model_name = stamped_name(name, stamp)
    variants = [
        {
            **{k: v for k, v in variant.items() if k not in ("ModelName",)},
            "ModelName": model_name,
        }
        for variant in old_config["ProductionVariants"]
    ]
    config = {
        "EndpointConfigName": stamped_name(name, stamp),
        "ProductionVariants": variants,
    }
    if old_config.get("AsyncInferenceConfig"):
        config["AsyncInferenceConfig"] = old_config["AsyncInferenceConfig"]
    try:
        sagemaker.create_model(
            ModelName=model_name,
            ExecutionRoleArn=old_model["ExecutionRoleArn"],
            PrimaryContainer=container,
        )
        sagemaker.create_endpoint_config(**config)
        sagemaker.update_endpoint(
            EndpointName=name,
            EndpointConfigName=config["EndpointConfigName"],
            RetainAllVariantProperties=True,
        )
    except Exception as exc:
        raise DeployError(f"endpoint {name}: update refused ({aws_reason(exc)})") from exc
    say(
        f"endpoint {name}: updating to {config['EndpointConfigName']} (model {model_name}); the old instances "
        "serve until the new ones answer /ping"
    )
    wait_in_service(aws, name, say=say, poll_s=poll_s)
    if change.min_instances is not None or change.max_instances is not None:
        current = _current_scaling(aws, name)
        scaling = replace(
            current,
            min_instances=_either(change.min_instances, current.min_instances),
            max_instances=_either(change.max_instances, current.max_instances),
        )
        asynchronous = "AsyncInferenceConfig" in config
        if scaling.min_instances < (0 if asynchronous else 1) or scaling.min_instances > scaling.max_instances:
            raise DeployError(
                f"--min {scaling.min_instances} --max {scaling.max_instances}: need min <= max"
                f"{'' if asynchronous else ' and min >= 1 (only --async endpoints scale to zero)'}"
            )
        for line in apply_scaling(aws, name, scaling, asynchronous=asynchronous):
            say(line)
    _delete_quietly(sagemaker, old_config["EndpointConfigName"], old_model_name, say)
    return {
        "endpoint": name,
        "model": model_name,
        "endpoint_config": config["EndpointConfigName"],
    }


def _either(value: int | None, current: int) -> int:
    return current if value is None else value


def _current_scaling(aws: Aws, name: str) -> Scaling:
    autoscaling = aws.client("application-autoscaling")
    targets = autoscaling.describe_scalable_targets(
        ServiceNamespace=NAMESPACE,
        ResourceIds=[resource_id(name)],
        ScalableDimension=DIMENSION,
    )["ScalableTargets"]
    policies = autoscaling.describe_scaling_policies(
        ServiceNamespace=NAMESPACE,
        ResourceId=resource_id(name),
        PolicyNames=[policy_names(name)["target"]],
    )["ScalingPolicies"]
    target = policies[0]["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] if policies else 10.0
    if not targets:
        return Scaling(1, 1, target)
    return Scaling(targets[0]["MinCapacity"], targets[0]["MaxCapacity"], target)


def delete_endpoint(aws: Aws, name: str, *, say: Say = print) -> None:
    """Autoscaling first (AWS asks for it before the endpoint goes), then the endpoint, its config and model."""
    sagemaker = aws.client("sagemaker")
    endpoint = describe_endpoint(aws, name)
    try:
        config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    except Exception as exc:
        if not is_not_found(exc):
            raise DeployError(f"endpoint {name}: cannot read its config ({aws_reason(exc)})") from exc
        config = None
    try:
        for line in remove_scaling(aws, name):
            say(line)
        sagemaker.delete_endpoint(EndpointName=name)
    except Exception as exc:
        raise DeployError(f"endpoint {name}: delete refused ({aws_reason(exc)})") from exc
    say(f"endpoint {name} deleted")
    if config is not None:
        _delete_quietly(
            sagemaker,
            config["EndpointConfigName"],
            config["ProductionVariants"][0]["ModelName"],
            say,
        )


def _delete_quietly(sagemaker, config_name: str, model_name: str, say: Say) -> None:
    """Old configs and models cost nothing but clutter; a failure to remove them is reported, not raised."""
    for kind, call, key, value in (
        (
            "endpoint config",
            sagemaker.delete_endpoint_config,
            "EndpointConfigName",
            config_name,
        ),
        ("model", sagemaker.delete_model, "ModelName", model_name),
    ):
        try:
            call(**{key: value})
            say(f"{kind} {value} deleted")
        except Exception as exc:  # noqa: BLE001 - clean-up only: the endpoint itself is already right
            say(f"{kind} {value} left in place ({aws_reason(exc)})")
