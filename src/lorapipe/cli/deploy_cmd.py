"""`lorapipe deploy package|endpoint|update|delete|invoke`: the lorapipe image as a SageMaker endpoint.

Only argparse lives here; boto3 and the deploy library load inside the handlers.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_ENDPOINT = "lorapipe"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "deploy",
        help="serve through SageMaker hosting: model.tar.gz, endpoints (real-time or async), invoke",
        description="Run the lorapipe image (`serve`) as an autoscaled SageMaker endpoint with the same A1111 API "
        "(POST /invocations takes txt2img/img2img JSON). See deploy/hosting.yaml for CloudFormation.",
    )
    commands = parser.add_subparsers(dest="deploy_command", metavar="COMMAND")
    parser.set_defaults(handler=lambda _args: _print_help(parser))

    package = commands.add_parser(
        "package",
        help="build a model.tar.gz: LoRA files + a manifest naming the base model",
    )
    package.add_argument(
        "--base-model",
        required=True,
        metavar="LOCATION",
        help="hub id, path inside the image, or s3:// URL of a diffusers folder or .safetensors",
    )
    package.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE[=NAME]",
        help="a LoRA to bundle (name: the file stem unless =NAME); repeat for more",
    )
    package.add_argument(
        "--lora-dir",
        metavar="DIR",
        help="bundle every .safetensors LoRA in this folder",
    )
    package.add_argument(
        "--lora-prefix",
        metavar="S3_PREFIX",
        help="also fetch LoRAs from here at request time",
    )
    package.add_argument("-o", "--output", default="model.tar.gz", metavar="FILE")
    package.add_argument(
        "--upload",
        metavar="S3_PREFIX",
        help="upload the archive (with .sha256) under this prefix",
    )
    package.add_argument("--s3-endpoint", metavar="URL", default=os.environ.get("AWS_ENDPOINT_URL"))
    package.set_defaults(handler=_package)

    endpoint = commands.add_parser("endpoint", help="create model, endpoint config, endpoint and autoscaling")
    _add_name(endpoint)
    endpoint.add_argument(
        "--image",
        required=True,
        metavar="URI",
        help="the lorapipe image in ECR (see container/)",
    )
    endpoint.add_argument(
        "--role",
        required=True,
        metavar="ARN",
        help="SageMaker execution role (see deploy/)",
    )
    endpoint.add_argument(
        "--instance-type",
        default="ml.g5.xlarge",
        help="ml.g5.xlarge (A10G), ml.g6.xlarge (L4)",
    )
    endpoint.add_argument(
        "--model-data",
        metavar="S3_URL",
        help="model.tar.gz from `lorapipe deploy package`",
    )
    endpoint.add_argument(
        "--base-model",
        metavar="LOCATION",
        help="without --model-data: the base model location",
    )
    endpoint.add_argument(
        "--loras",
        metavar="S3_PREFIX",
        help="LoRAs fetched at request time from this prefix",
    )
    endpoint.add_argument(
        "--async",
        dest="asynchronous",
        action="store_true",
        help="asynchronous inference: requests and answers through S3, may scale to zero",
    )
    endpoint.add_argument(
        "--async-output",
        metavar="S3_PREFIX",
        help="--async: results/ and failures/ go here",
    )
    endpoint.add_argument(
        "--success-topic",
        metavar="SNS_ARN",
        help="--async: notified when an answer is written",
    )
    endpoint.add_argument(
        "--error-topic",
        metavar="SNS_ARN",
        help="--async: notified when a request fails",
    )
    endpoint.add_argument(
        "--min",
        dest="min_instances",
        type=int,
        help="fewest instances (default 1; --async: 0)",
    )
    endpoint.add_argument(
        "--max",
        dest="max_instances",
        type=int,
        default=1,
        help="most instances (default 1)",
    )
    endpoint.add_argument(
        "--target",
        type=float,
        help="per-instance target: invocations/minute (real-time, 10) or waiting requests (async, 2)",
    )
    endpoint.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="container environment, e.g. LORAPIPE_DTYPE=bf16; repeat for more",
    )
    _add_aws(endpoint)
    endpoint.set_defaults(handler=_endpoint)

    update = commands.add_parser("update", help="new model + endpoint config, then UpdateEndpoint (no downtime)")
    _add_name(update)
    update.add_argument("--model-data", metavar="S3_URL", help="a new model.tar.gz (a new LoRA set)")
    update.add_argument("--loras", metavar="S3_PREFIX", help="a new LoRA prefix")
    update.add_argument(
        "--add-lora",
        metavar="FILE[=NAME]",
        help="add one LoRA: uploaded to the endpoint's prefix, or a rebuilt model.tar.gz under --staging",
    )
    update.add_argument(
        "--staging",
        metavar="S3_PREFIX",
        help="--add-lora without a prefix: where the archive goes",
    )
    update.add_argument("--image", metavar="URI", help="a new image")
    update.add_argument("--min", dest="min_instances", type=int)
    update.add_argument("--max", dest="max_instances", type=int)
    _add_aws(update)
    update.set_defaults(handler=_update)

    delete = commands.add_parser("delete", help="delete the endpoint, its autoscaling, config and model")
    _add_name(delete)
    _add_aws(delete)
    delete.set_defaults(handler=_delete)

    invoke = commands.add_parser("invoke", help="send one A1111 txt2img/img2img request and save the images")
    _add_name(invoke)
    invoke.add_argument("--json", metavar="FILE", help="the request body (A1111 JSON; '-' reads stdin)")
    invoke.add_argument("--prompt", help="without --json: a txt2img prompt (<lora:NAME:w> works)")
    invoke.add_argument("--steps", type=int, default=30)
    invoke.add_argument("--width", type=int, default=1024)
    invoke.add_argument("--height", type=int, default=1024)
    invoke.add_argument("--seed", type=int, default=-1)
    invoke.add_argument(
        "--async",
        dest="asynchronous",
        action="store_true",
        help="through S3 and InvokeEndpointAsync, polling for the answer",
    )
    invoke.add_argument(
        "--async-endpoint",
        metavar="NAME",
        help="send long jobs (hires fix, batches, > 60 steps) asynchronously to this endpoint",
    )
    invoke.add_argument(
        "--input",
        metavar="S3_PREFIX",
        help="--async: where the request goes (default: <the endpoint's async output>/inputs/)",
    )
    invoke.add_argument("--png", action="store_true", help="ask for the PNG itself (Accept: image/png)")
    invoke.add_argument(
        "-o",
        "--output-dir",
        default=".",
        metavar="DIR",
        help="where images are written",
    )
    invoke.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="--async: seconds to wait for the answer",
    )
    _add_aws(invoke)
    invoke.set_defaults(handler=_invoke)


def _add_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name",
        nargs="?",
        default=DEFAULT_ENDPOINT,
        metavar="ENDPOINT",
        help=f"endpoint name (default: {DEFAULT_ENDPOINT})",
    )


def _add_aws(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--region", help="AWS region (default: the AWS config's)")
    parser.add_argument("--sagemaker-endpoint", metavar="URL", help="SageMaker API endpoint override")
    parser.add_argument(
        "--s3-endpoint",
        metavar="URL",
        default=os.environ.get("AWS_ENDPOINT_URL"),
        help="S3 endpoint for uploads (default: $AWS_ENDPOINT_URL)",
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=30.0,
        metavar="S",
        help="status poll interval (30)",
    )


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _aws(args: argparse.Namespace):
    from lorapipe.deploy.aws import Aws

    return Aws(
        args.region,
        sagemaker_endpoint_url=args.sagemaker_endpoint,
        s3_endpoint_url=args.s3_endpoint,
    )


def _named_file(text: str) -> tuple[str, Path]:
    path, _, name = text.partition("=")
    return name or Path(path).stem, Path(path)


def _package(args: argparse.Namespace) -> int:
    from lorapipe.errors import ConfigError
    from lorapipe.hosting_contract import build_model_archive
    from lorapipe.registry import LoraRegistry

    loras: dict[str, Path] = {}
    if args.lora_dir:
        loras.update({entry.name: entry.path for entry in LoraRegistry(args.lora_dir).entries()})
    for text in args.lora:
        name, path = _named_file(text)
        loras[name] = path
    if not loras and not args.lora_prefix:
        raise ConfigError("--lora/--lora-dir/--lora-prefix: give at least one LoRA or a prefix to fetch them from")
    output = Path(args.output)
    manifest = build_model_archive(output, args.base_model, loras, lora_prefix=args.lora_prefix)
    print(
        f"{output}: {len(manifest['loras'])} LoRA(s) ({', '.join(manifest['loras']) or 'none'}), "
        f"base model {args.base_model}"
    )
    if args.upload:
        from lorapipe.store import open_store

        print(f"uploaded: {open_store(args.upload, endpoint_url=args.s3_endpoint).upload_file(output, output.name)}")
    return 0


def _endpoint(args: argparse.Namespace) -> int:
    from lorapipe.deploy.endpoints import EndpointSpec, create_endpoint
    from lorapipe.errors import ConfigError

    environment = []
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env {item!r}: expected KEY=VALUE")
        environment.append((key, value))
    minimum = args.min_instances if args.min_instances is not None else (0 if args.asynchronous else 1)
    spec = EndpointSpec(
        name=args.name,
        image=args.image,
        role_arn=args.role,
        instance_type=args.instance_type,
        min_instances=minimum,
        max_instances=args.max_instances,
        model_data_url=args.model_data,
        base_model=args.base_model,
        lora_prefix=args.loras,
        asynchronous=args.asynchronous,
        async_output=args.async_output,
        success_topic=args.success_topic,
        error_topic=args.error_topic,
        target=args.target,
        environment=tuple(environment),
    )
    create_endpoint(spec, _aws(args), poll_s=args.poll)
    print(
        f"endpoint {spec.name} in service; try: lorapipe deploy invoke {spec.name} --prompt 'a photo'"
        f"{' --async' if spec.asynchronous else ''}"
    )
    return 0


def _update(args: argparse.Namespace) -> int:
    from lorapipe.deploy.endpoints import EndpointChange, update_endpoint
    from lorapipe.errors import ConfigError

    aws = _aws(args)
    if args.add_lora:
        from lorapipe.deploy.lora_set import add_lora_to_endpoint

        name, path = _named_file(args.add_lora)
        add_lora_to_endpoint(aws, args.name, path, name, args.staging or "", poll_s=args.poll)
        return 0
    change = EndpointChange(
        model_data_url=args.model_data,
        lora_prefix=args.loras,
        image=args.image,
        min_instances=args.min_instances,
        max_instances=args.max_instances,
    )
    if change == EndpointChange():
        raise ConfigError(
            "deploy update: nothing to change; give --model-data, --loras, --add-lora, --image, --min or --max"
        )
    update_endpoint(aws, args.name, change, poll_s=args.poll)
    return 0


def _delete(args: argparse.Namespace) -> int:
    from lorapipe.deploy.endpoints import delete_endpoint

    delete_endpoint(_aws(args), args.name)
    return 0


def _invoke(args: argparse.Namespace) -> int:
    import json

    from lorapipe.deploy.invoke import (
        async_input_prefix,
        invoke,
        invoke_async,
        is_long_job,
    )
    from lorapipe.errors import ConfigError

    if args.json:
        text = sys.stdin.read() if args.json == "-" else Path(args.json).read_text(encoding="utf-8")
        try:
            request = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--json {args.json}: not valid JSON ({exc})") from None
    elif args.prompt is not None:
        request = {
            "prompt": args.prompt,
            "steps": args.steps,
            "width": args.width,
            "height": args.height,
            "seed": args.seed,
        }
    else:
        raise ConfigError("deploy invoke: give --json FILE or --prompt TEXT")
    aws = _aws(args)
    accept = "image/png" if args.png else "application/json"
    endpoint, asynchronous = args.name, args.asynchronous
    if args.async_endpoint and is_long_job(request):
        endpoint, asynchronous = args.async_endpoint, True
        print(f"long job (hires fix, batch or many steps): sent asynchronously to {endpoint}")
    if asynchronous:
        answer = invoke_async(
            aws,
            endpoint,
            request,
            args.input or async_input_prefix(aws, endpoint),
            accept=accept,
            timeout_s=args.timeout,
            poll_s=min(args.poll, 5.0),
        )
    else:
        answer = invoke(aws, endpoint, request, accept=accept)
    for path in _save(answer, Path(args.output_dir), endpoint):
        print(path)
    return 0


def _save(answer, folder: Path, stem: str) -> list[Path]:
    import base64
    import json

    from lorapipe.atomic import atomic_write_bytes
    from lorapipe.errors import DeployError

    folder.mkdir(parents=True, exist_ok=True)
    if answer.content_type.startswith("image/"):
        images = [answer.body]
    else:
        try:
            data = json.loads(answer.body)
            images = [base64.b64decode(image) for image in data["images"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise DeployError(f"endpoint {stem}: the answer is not A1111 JSON ({answer.body[:200]!r})") from exc
        info = json.loads(data.get("info") or "{}")
        if info.get("comments"):
            print(info["comments"])
    written = []
    for index, image in enumerate(images):
        path = folder / f"{stem}-{index:02d}.png"
        atomic_write_bytes(path, image)
        written.append(path)
    return written
