"""`lorapipe serve --base-model PATH --lora-dir DIR`: the AUTOMATIC1111-compatible API and web page.

Only argparse lives here; FastAPI, uvicorn and torch load inside the handler.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve an AUTOMATIC1111-compatible API (/sdapi/v1/*) and a web page for SDXL + LoRAs",
        description="Serve the A1111 API and a web page at http://HOST:PORT/. Binds 127.0.0.1 unless --listen; "
        "--listen requires --api-auth.",
    )
    parser.add_argument(
        "--base-model",
        required=True,
        metavar="PATH",
        help="diffusers SDXL folder, single-file .safetensors checkpoint, or hub id",
    )
    parser.add_argument(
        "--lora-dir",
        metavar="DIR",
        help="folder of .safetensors LoRAs (names = file stems); default: the folder "
        "`lorapipe pipeline run` publishes to ($LORAPIPE_HOME/loras, ~/.lorapipe/loras)",
    )
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--listen", action="store_true", help="bind 0.0.0.0 (requires --api-auth)")
    parser.add_argument("--api-auth", metavar="USER:PASS[,USER:PASS]", help="HTTP Basic credentials")
    parser.add_argument(
        "--cors-allow-origins",
        metavar="ORIGINS",
        default="",
        help="comma-separated browser origins allowed to call the API (default: none)",
    )
    parser.add_argument("--queue-size", type=int, default=8, help="requests waiting beyond it get 503")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request, queue wait included")
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="default: fp16 on cuda, fp32 on cpu")
    studio = parser.add_argument_group("studio (the /studio/ page and /studio/api: photos -> LoRA -> images)")
    studio.add_argument(
        "--studio-home",
        metavar="DIR",
        help="pipeline home for the studio's datasets and runs (default: $LORAPIPE_HOME or "
        "~/.lorapipe, the runs `lorapipe runs list` shows)",
    )
    studio.add_argument(
        "--studio-busy-policy",
        choices=("refuse", "wait", "share"),
        default="refuse",
        help="generation while a training run holds the GPU: refuse = 503 + Retry-After (default), "
        "wait = hold the request until the run ends, share = no guard",
    )
    studio.add_argument(
        "--studio-preset",
        action="append",
        default=[],
        metavar="TOML",
        help="offer this preset TOML beside the shipped ones (named by its file stem); repeatable",
    )
    studio.add_argument("--studio-captioner", default="blip", help="captioner for 'caption all' (default: blip)")
    studio.add_argument(
        "--studio-captioner-model",
        metavar="PATH_OR_ID",
        help="captioner model folder or hub id (default: the captioner's own)",
    )
    studio.add_argument("--studio-max-photos", type=int, default=300, help="photos per dataset (300)")
    studio.add_argument(
        "--studio-run-template",
        metavar="JSON",
        help="what studio runs ask besides dataset and config, as a run's request.json: e.g. "
        '{"backend": "sagemaker", "output": "s3://...", "sagemaker": {"image": ..., '
        '"role_arn": ...}} (default: the local backend)',
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from lorapipe.cli.lora_dir import resolve_lora_dir
    from lorapipe.sdxl.libraries import import_sdxl_libraries
    from lorapipe.sdxl.load import resolve_base_model
    from lorapipe.server.app import create_app
    from lorapipe.server.settings import Limits, ServerSettings, parse_api_auth
    from lorapipe.server.shutdown import serve
    from lorapipe.server.studio_settings import StudioSettings

    resolve_base_model(args.base_model)  # a bad path fails here in milliseconds, before torch loads
    settings = ServerSettings(
        base_model=args.base_model,
        lora_dir=str(resolve_lora_dir(args.lora_dir)),
        host="0.0.0.0" if args.listen else "127.0.0.1",
        port=args.port,
        api_auth=parse_api_auth(args.api_auth),
        queue_size=args.queue_size,
        request_timeout_s=args.timeout,
        cors_origins=tuple(o.strip() for o in args.cors_allow_origins.split(",") if o.strip()),
        device=args.device,
        dtype=args.dtype,
        limits=Limits(max_steps=args.max_steps, max_batch_size=args.max_batch_size),
        studio=StudioSettings(
            home=args.studio_home,
            busy_policy=args.studio_busy_policy,
            presets=tuple(args.studio_preset),
            captioner=args.studio_captioner,
            captioner_model=args.studio_captioner_model,
            max_photos=args.studio_max_photos,
            run_template=args.studio_run_template,
        ),
    )
    import_sdxl_libraries()  # after the settings are checked: a bad flag still fails before torch loads
    serve(create_app(settings), host=settings.host, port=settings.port)
    return 0
