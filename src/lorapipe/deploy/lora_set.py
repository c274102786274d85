"""Put a new LoRA in front of an endpoint (`lorapipe pipeline run --deploy`, `lorapipe deploy add-lora`).

- An endpoint with an S3 LoRA prefix (`$LORAPIPE_LORA_PREFIX` on its model): the LoRA is uploaded there with its
  .sha256, and every instance fetches it the first time a prompt names it. Nothing restarts. (A LoRA of the same
  name inside the endpoint's model.tar.gz stays pinned: archived LoRAs win.)
- An endpoint serving a model.tar.gz only: a new archive (its LoRAs plus this one, same base model) goes next to
  the run's output, and `update_endpoint` rolls the endpoint over to it with no downtime.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from lorapipe.deploy.aws import Aws
from lorapipe.deploy.endpoints import (
    EndpointChange,
    Say,
    describe_endpoint,
    update_endpoint,
)
from lorapipe.errors import DeployError, LorapipeError
from lorapipe.hosting_contract import (
    LORA_PREFIX_ENV,
    MANIFEST_NAME,
    build_model_archive,
    unpack_model_archive,
)
from lorapipe.registry import LORA_SUFFIX
from lorapipe.store import open_store

ARCHIVE_NAME = "model.tar.gz"


def current_model(aws: Aws, endpoint: str) -> dict:
    """The PrimaryContainer of the model the endpoint serves now."""
    sagemaker = aws.client("sagemaker")
    config = sagemaker.describe_endpoint_config(
        EndpointConfigName=describe_endpoint(aws, endpoint)["EndpointConfigName"]
    )
    return sagemaker.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])["PrimaryContainer"]


def add_lora_to_endpoint(
    aws: Aws,
    endpoint: str,
    lora: Path,
    name: str,
    staging_url: str,
    *,
    say: Say = print,
    poll_s: float = 30.0,
) -> dict:
    """Make `<lora:name:w>` work on `endpoint`; `staging_url` is where a rebuilt model.tar.gz may go."""
    container = current_model(aws, endpoint)
    prefix = (container.get("Environment") or {}).get(LORA_PREFIX_ENV)
    try:
        if prefix:
            url = open_store(prefix, endpoint_url=aws.s3_endpoint_url).upload_file(lora, f"{name}{LORA_SUFFIX}")
            say(f"deploy: {url} uploaded; {endpoint} serves <lora:{name}:1> from its next request")
            return {"endpoint": endpoint, "lora_url": url, "updated": False}
        archive_url = container.get("ModelDataUrl")
        if not archive_url:
            raise DeployError(
                f"endpoint {endpoint}: its model has neither a model.tar.gz nor ${LORA_PREFIX_ENV}; "
                "redeploy it with --model-data or --loras"
            )
        new_url = _rebuilt_archive(archive_url, lora, name, staging_url, aws)
    except DeployError:
        raise
    except LorapipeError as exc:
        raise DeployError(f"endpoint {endpoint}: cannot add LoRA {name} ({exc})") from exc
    say(f"deploy: {new_url} built with <lora:{name}>")
    result = update_endpoint(aws, endpoint, EndpointChange(model_data_url=new_url), say=say, poll_s=poll_s)
    return {**result, "model_data_url": new_url, "updated": True}


def _rebuilt_archive(archive_url: str, lora: Path, name: str, staging_url: str, aws: Aws) -> str:
    folder, _, archive_name = archive_url.rpartition("/")
    with tempfile.TemporaryDirectory(prefix="lorapipe-archive-") as scratch:
        old = open_store(folder, endpoint_url=aws.s3_endpoint_url).fetch_file(
            archive_name, Path(scratch) / "old.tar.gz"
        )
        unpacked = Path(scratch) / "model"
        hosted = unpack_model_archive(old, unpacked)
        written = json.loads((unpacked / MANIFEST_NAME).read_text(encoding="utf-8"))
        if hosted.base_model.startswith(str(unpacked)):
            raise DeployError(f"{archive_url}: bundles its base model; rebuild it with `lorapipe deploy package`")
        new = Path(scratch) / ARCHIVE_NAME
        build_model_archive(
            new,
            written["base_model"],
            {**hosted.loras, name: lora},
            lora_prefix=written.get("lora_prefix"),
        )
        return open_store(staging_url, endpoint_url=aws.s3_endpoint_url).upload_file(new, ARCHIVE_NAME)
