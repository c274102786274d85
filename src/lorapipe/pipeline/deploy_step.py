"""After publish, `--deploy ENDPOINT`: the new LoRA joins the endpoint's LoRA set (see lorapipe.deploy.lora_set)."""

from __future__ import annotations

from pathlib import Path

from lorapipe.deploy.aws import Aws
from lorapipe.deploy.lora_set import add_lora_to_endpoint
from lorapipe.errors import DeployError, PipelineError
from lorapipe.pipeline.request import RunRequest
from lorapipe.pipeline.runlog import RunLog


def deploy_published(
    request: RunRequest,
    lora: Path,
    lora_name: str,
    output_prefix: str | None,
    log: RunLog,
) -> dict:
    """Upload the LoRA to the endpoint's prefix, or roll the endpoint to a rebuilt model.tar.gz under the run's
    output prefix; the result goes into publish.json."""
    aws = Aws(
        request.sagemaker.region,
        sagemaker_endpoint_url=request.sagemaker.endpoint_url,
        s3_endpoint_url=request.s3_endpoint_url,
    )
    try:
        return add_lora_to_endpoint(
            aws,
            request.deploy_endpoint,
            lora,
            lora_name,
            output_prefix or "",
            say=log.info,
            poll_s=request.sagemaker.poll_interval_s,
        )
    except DeployError as exc:
        raise PipelineError(
            f"--deploy {request.deploy_endpoint}: the LoRA is published but the endpoint was not "
            f"updated ({exc}); retry with `lorapipe deploy update {request.deploy_endpoint} "
            f"--add-lora {lora}`"
        ) from exc
