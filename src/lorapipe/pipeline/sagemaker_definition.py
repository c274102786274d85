"""An optional SageMaker Pipelines definition: the recipe's one training step, with its six parameter names.

The recipe's users start their pipeline from the console with InputS3DatasetLocation, OutputS3ModelLocation,
TrainingDockerImage, TrainingInstanceType, TrainingVolumeSizeInGB and MaxTrainingRuntimeInSeconds; this keeps those
names and adds what the recipe left out: checkpoints (so a retry resumes), a capacity retry policy and the
progress-line metrics. Written as the definition JSON itself, so no SageMaker SDK is needed to produce it.
"""

from __future__ import annotations

from lorapipe.container_contract import TRAIN_CHANNEL
from lorapipe.errors import PipelineError
from lorapipe.pipeline.sagemaker_backend import CHECKPOINT_LOCAL_PATH, METRIC_DEFINITIONS

DEFINITION_VERSION = "2020-12-01"
RECIPE_PARAMETERS = (
    # name, type, default; the dataset default ends in "/" so the channel never matches 0001-dataset-old/ too
    ("InputS3DatasetLocation", "String", "s3://BUCKET/0001-dataset/"),
    ("OutputS3ModelLocation", "String", "s3://BUCKET/models/"),
    ("TrainingDockerImage", "String", "ACCOUNT.dkr.ecr.REGION.amazonaws.com/lorapipe-training:latest"),
    ("TrainingInstanceType", "String", "ml.g5.4xlarge"),
    ("TrainingVolumeSizeInGB", "Integer", 50),
    ("MaxTrainingRuntimeInSeconds", "Integer", 86400),
)
EXTRA_PARAMETERS = (
    ("CheckpointS3Location", "String", "s3://BUCKET/checkpoints/"),
    ("ExecutionRoleArn", "String", "arn:aws:iam::ACCOUNT:role/lorapipe-training"),
)
# Scarce GPU capacity is the failure worth retrying (reliability anchors §1.6); max 20 attempts allowed.
RETRY_POLICIES = (
    {
        "ExceptionType": ["SageMaker.CAPACITY_ERROR", "SageMaker.JOB_INTERNAL_ERROR", "SageMaker.RESOURCE_LIMIT"],
        "IntervalSeconds": 60,
        "BackoffRate": 2.0,
        "MaxAttempts": 5,
    },
)


def _get(name: str) -> dict:
    return {"Get": f"Parameters.{name}"}


def pipeline_definition(role_arn: str | None = None, step_name: str = "lorapipe-training") -> dict:
    """The definition document (``PipelineDefinitionBody`` once serialised to JSON)."""
    parameters = [
        {"Name": name, "Type": kind, "DefaultValue": default}
        for name, kind, default in (*RECIPE_PARAMETERS, *EXTRA_PARAMETERS)
    ]
    if role_arn:
        for parameter in parameters:
            if parameter["Name"] == "ExecutionRoleArn":
                parameter["DefaultValue"] = role_arn
    training_arguments = {
        "AlgorithmSpecification": {
            "TrainingImage": _get("TrainingDockerImage"),
            "TrainingInputMode": "File",
            "MetricDefinitions": [dict(m) for m in METRIC_DEFINITIONS],
        },
        "RoleArn": _get("ExecutionRoleArn"),
        "InputDataConfig": [
            {
                "ChannelName": TRAIN_CHANNEL,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": _get("InputS3DatasetLocation"),
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
            }
        ],
        "OutputDataConfig": {"S3OutputPath": _get("OutputS3ModelLocation")},
        "ResourceConfig": {
            "InstanceType": _get("TrainingInstanceType"),
            "InstanceCount": 1,
            "VolumeSizeInGB": _get("TrainingVolumeSizeInGB"),
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": _get("MaxTrainingRuntimeInSeconds")},
        "CheckpointConfig": {"S3Uri": _get("CheckpointS3Location"), "LocalPath": CHECKPOINT_LOCAL_PATH},
        "HyperParameters": {},
    }
    return {
        "Version": DEFINITION_VERSION,
        "Metadata": {"Generator": "lorapipe pipeline sagemaker-definition"},
        "Parameters": parameters,
        "Steps": [
            {
                "Name": step_name,
                "Type": "Training",
                "Arguments": training_arguments,
                "RetryPolicies": [dict(policy) for policy in RETRY_POLICIES],
            }
        ],
    }


def upsert_pipeline(
    name: str,
    role_arn: str,
    *,
    pipeline_role_arn: str | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
) -> str:
    """Create the SageMaker pipeline, or update it if it exists; return its ARN.

    `role_arn` is the training job's role (the ExecutionRoleArn parameter's default); `pipeline_role_arn` the role
    Pipelines itself uses to start that job (deploy/: PipelineExecutionRole), the training role when not given.
    """
    import json

    import boto3

    client = boto3.session.Session(region_name=region).client("sagemaker", endpoint_url=endpoint_url)
    body = json.dumps(pipeline_definition(role_arn=role_arn))
    arguments = {
        "PipelineName": name,
        "PipelineDefinition": body,
        "RoleArn": pipeline_role_arn or role_arn,
        "PipelineDescription": "lorapipe: one SDXL LoRA training job (recipe parameters)",
    }
    try:
        # Listing by prefix answers "does it exist" the same way on AWS and on emulators (whose not-found
        # errors differ), without treating every describe error as "absent".
        summaries = client.list_pipelines(PipelineNamePrefix=name).get("PipelineSummaries", [])
        if not any(summary.get("PipelineName") == name for summary in summaries):
            return client.create_pipeline(**arguments)["PipelineArn"]
        return client.update_pipeline(**{k: v for k, v in arguments.items() if k != "PipelineDescription"})[
            "PipelineArn"
        ]
    except Exception as exc:
        if isinstance(exc, PipelineError):
            raise
        raise PipelineError(
            f"sagemaker pipeline {name}: create/update refused ({type(exc).__name__}: {exc}); "
            "check the role ARN, region and credentials"
        ) from exc
