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
    parser.add_argument("--base-model", required=True, metavar="PATH",
                        help="diffusers SDXL folder, single-file .safetensors checkpoint, or hub id")
    parser.add_argument("--lora-dir", metavar="DIR",
                        help="folder of .safetensors LoRAs (names = file stems); default: the folder "
                             "`lorapipe pipeline run` publishes to ($LORAPIPE_HOME/loras, ~/.lorapipe/loras)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--listen", action="store_true", help="bind 0.0.0.0 (requires --api-auth)")
    parser.add_argument("--api-auth", metavar="USER:PASS[,USER:PASS]", help="HTTP Basic credentials")
    parser.add_argument("--cors-allow-origins", metavar="ORIGINS", default="",
                        help="comma-separated browser origins allowed to call the API (default: none)")
    parser.add_argument("--queue-size", type=int, default=8, help="requests waiting beyond it get 503")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request, queue wait included")
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="default: fp16 on cuda, fp32 on cpu")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from lorapipe.cli.lora_dir import resolve_lora_dir
    from lorapipe.sdxl.load import resolve_base_model
    from lorapipe.server.app import create_app
    from lorapipe.server.settings import Limits, ServerSettings, parse_api_auth
    from lorapipe.server.shutdown import serve

    resolve_base_model(args.base_model)  # a bad path fails here in milliseconds, before torch loads
    settings = ServerSettings(
        base_model=args.base_model, lora_dir=str(resolve_lora_dir(args.lora_dir)),
        host="0.0.0.0" if args.listen else "127.0.0.1", port=args.port,
        api_auth=parse_api_auth(args.api_auth), queue_size=args.queue_size, request_timeout_s=args.timeout,
        cors_origins=tuple(o.strip() for o in args.cors_allow_origins.split(",") if o.strip()),
        device=args.device, dtype=args.dtype,
        limits=Limits(max_steps=args.max_steps, max_batch_size=args.max_batch_size),
    )
    serve(create_app(settings), host=settings.host, port=settings.port)
    return 0
