"""A small client for a lorapipe endpoint: InvokeEndpoint (real-time) or, for long jobs, the asynchronous path.

Asynchronous inference as AWS defines it: the request JSON goes to S3, InvokeEndpointAsync queues it, and the answer
(the same A1111 JSON or PNG /invocations returns) appears at the OutputLocation SageMaker gives back, or a failure at
the FailureLocation. SNS topics on the endpoint announce both; this client polls instead. `is_long_job` is the rule
for what a client should route to an asynchronous endpoint: hires fix and batches run past a real-time endpoint's
60-second limit on one GPU.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from lorapipe.deploy.aws import Aws, aws_reason
from lorapipe.deploy.endpoints import check_endpoint_name
from lorapipe.errors import DeployError

CONTENT_TYPE = "application/json"
LONG_STEPS = 60  # beyond this many steps one SDXL image nears the real-time 60 s limit on a g5/g6


@dataclass(frozen=True)
class Answer:
    body: bytes
    content_type: str
    location: str | None = None  # the S3 output location of an asynchronous answer


def is_long_job(request: dict) -> bool:
    """Hires fix, several images, or many steps: route it to an asynchronous endpoint."""
    images = int(request.get("batch_size") or 1) * int(request.get("n_iter") or 1)
    return bool(request.get("enable_hr")) or images > 1 or int(request.get("steps") or 0) > LONG_STEPS


def invoke(aws: Aws, endpoint: str, request: dict, *, accept: str = CONTENT_TYPE) -> Answer:
    runtime = aws.client("sagemaker-runtime")
    try:
        response = runtime.invoke_endpoint(
            EndpointName=check_endpoint_name(endpoint),
            ContentType=CONTENT_TYPE,
            Accept=accept,
            Body=json.dumps(request).encode(),
        )
    except Exception as exc:
        raise DeployError(f"endpoint {endpoint}: invocation failed ({aws_reason(exc)})") from exc
    return Answer(response["Body"].read(), response.get("ContentType", accept))


def invoke_async(
    aws: Aws,
    endpoint: str,
    request: dict,
    input_prefix: str,
    *,
    accept: str = CONTENT_TYPE,
    timeout_s: float = 3600.0,
    poll_s: float = 5.0,
    say: Callable[[str], None] = print,
) -> Answer:
    """Upload `request` under `input_prefix`, InvokeEndpointAsync, and poll S3 until the answer or failure lands."""
    if not input_prefix.startswith("s3://"):
        raise DeployError(f"--input {input_prefix}: asynchronous requests travel through S3; give s3://BUCKET/PREFIX/")
    bucket, key = _split(f"{input_prefix.rstrip('/')}/{uuid.uuid4().hex}.json")
    s3 = aws.client("s3")
    try:
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=json.dumps(request).encode(),
            ContentType=CONTENT_TYPE,
        )
        response = aws.client("sagemaker-runtime").invoke_endpoint_async(
            EndpointName=check_endpoint_name(endpoint),
            InputLocation=f"s3://{bucket}/{key}",
            ContentType=CONTENT_TYPE,
            Accept=accept,
        )
    except Exception as exc:
        raise DeployError(f"endpoint {endpoint}: asynchronous invocation failed ({aws_reason(exc)})") from exc
    output, failure = response["OutputLocation"], response.get("FailureLocation")
    say(f"queued as {response.get('InferenceId', '?')}; waiting for {output}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if failure and (found := _read(s3, failure)) is not None:
            raise DeployError(f"endpoint {endpoint}: the request failed: {found[0].decode('utf-8', 'replace')[:1000]}")
        if (found := _read(s3, output)) is not None:
            return Answer(found[0], found[1], location=output)
        time.sleep(poll_s)
    raise DeployError(
        f"endpoint {endpoint}: no answer at {output} after {timeout_s:g} s; it may still come "
        "(the SNS success topic announces it)"
    )


def _split(url: str) -> tuple[str, str]:
    bucket, _, key = url[len("s3://") :].partition("/")
    return bucket, key


def _read(s3, url: str) -> tuple[bytes, str] | None:
    bucket, key = _split(url)
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if "NoSuchKey" in aws_reason(exc) or "404" in aws_reason(exc):
            return None
        raise DeployError(f"{url}: cannot read it ({aws_reason(exc)})") from exc
    return response["Body"].read(), response.get("ContentType", CONTENT_TYPE)


def async_input_prefix(aws: Aws, endpoint: str) -> str:
    """Beside the endpoint's async results: `<async-output>/inputs/` (the execution role may read it)."""
    from lorapipe.deploy.endpoints import describe_endpoint

    sagemaker = aws.client("sagemaker")
    config = sagemaker.describe_endpoint_config(
        EndpointConfigName=describe_endpoint(aws, endpoint)["EndpointConfigName"]
    )
    asynchronous = config.get("AsyncInferenceConfig")
    if not asynchronous:
        raise DeployError(
            f"endpoint {endpoint}: real-time (no AsyncInferenceConfig); invoke it without --async "
            "or deploy one with `lorapipe deploy endpoint --async`"
        )
    results = asynchronous["OutputConfig"]["S3OutputPath"].rstrip("/")
    return results.rsplit("/", 1)[0] + "/inputs/"
