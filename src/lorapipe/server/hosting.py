"""SageMaker hosting: `serve` in the training image answers GET /ping and POST /invocations on port 8080.

A thin entry over the same app factory, job queue and generator as `lorapipe serve`: /invocations takes A1111
txt2img or img2img JSON (img2img when it carries `init_images`) and runs it through the very function the
/sdapi/v1 routes use, answering A1111's JSON, or the PNG itself when the client sends `Accept: image/png`.

- The model comes from `/opt/ml/model` (a `model.tar.gz` built by `lorapipe deploy package`; see
  `lorapipe.hosting_contract`), else from `$LORAPIPE_BASE_MODEL`. It loads in the background: /ping answers 503
  until the generator is ready and keeps answering 503, with the reason, if the model folder is missing or
  malformed (one log line naming what is missing; the process stays up, so SageMaker reports an unhealthy
  container instead of restarting it in a loop).
- LoRAs: the archive's own, plus any `NAME.safetensors` under the model's S3 LoRA prefix, fetched when a prompt
  first names it (server/hosted_loras.py). A LoRA that is nowhere is a 404, not A1111's warning: an endpoint
  should not bill for images without it.
- Only /ping and /invocations exist here (all SageMaker forwards); the listener binds 0.0.0.0 as SageMaker
  requires, and callers reach it only through IAM-signed InvokeEndpoint.
- SIGTERM (scale-in, endpoint update or delete) stops accepting connections and drains: queued and running
  requests finish and are answered before the process exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError

from lorapipe.errors import GenerationError, StoreError
from lorapipe.generate.infotext import png_bytes
from lorapipe.generate.prompt_syntax import parse_extra_networks
from lorapipe.hosting_contract import SERVING_PORT, read_hosted_model
from lorapipe.registry import LORA_SUFFIX, check_lora_name
from lorapipe.server.api_errors import ApiError
from lorapipe.server.app import create_app
from lorapipe.server.deps import HostedLoraSet, Ready, keep_hosted_loras
from lorapipe.server.guards import error_body, send_json
from lorapipe.server.hosted_loras import HostedLoras
from lorapipe.server.routes_generate import a1111_response, run_generation
from lorapipe.server.schemas import Img2ImgBody, Txt2ImgBody
from lorapipe.server.settings import Limits, ServerSettings

log = logging.getLogger("lorapipe.hosting")
HOSTING_PATHS = frozenset({"/ping", "/invocations"})
PNG = "image/png"


@dataclass(frozen=True)
class HostingOptions:
    """How this container serves; each has an environment variable because SageMaker passes no arguments."""

    opt_ml_root: str | None = None  # default: $LORAPIPE_OPT_ML or /opt/ml
    cache_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "lorapipe-hosting")
    device: str | None = None
    dtype: str | None = None
    queue_size: int = 8
    request_timeout_s: float = 600.0
    max_body_bytes: int = Limits().max_body_bytes

    def server_settings(self) -> ServerSettings:
        return ServerSettings(
            queue_size=self.queue_size,
            request_timeout_s=self.request_timeout_s,
            device=self.device,
            dtype=self.dtype,
            limits=Limits(max_body_bytes=self.max_body_bytes),
        )


def load_hosted_generator(app: FastAPI, options: HostingOptions):
    """Read the model folder, bring an s3:// base model local, and load the generator (in the loader thread)."""
    from lorapipe.container_contract import OptMl
    from lorapipe.generate.generator import Generator
    from lorapipe.generate.quiet import quiet_model_loading
    from lorapipe.sdxl.libraries import import_sdxl_libraries

    started = time.monotonic()
    model = read_hosted_model(OptMl.resolve(options.opt_ml_root).model_dir)
    loras = HostedLoras(options.cache_dir / "loras", model)
    base = _local_base_model(model.base_model, options.cache_dir / "base")
    log.info("loading base model %s (from %s)", base, model.source)
    import_sdxl_libraries()  # the container's one load: the import's objects are frozen out of later passes
    quiet_model_loading()
    generator = Generator.load(base, lora_dir=loras.folder, device=options.device, dtype=options.dtype)
    keep_hosted_loras(app, loras)
    names = ", ".join(sorted(loras.bundled)) or "none"
    log.info(
        "ready in %.1f s; bundled LoRAs: %s; LoRA prefix: %s",
        time.monotonic() - started,
        names,
        loras.prefix or "none",
    )
    return generator


def _local_base_model(location: str, cache: Path) -> str:
    """An s3:// base model (a diffusers folder prefix or a single .safetensors file) copied to `cache` once."""
    if not location.startswith("s3://"):
        return location
    from lorapipe.store import open_store

    parent, _, name = location.rstrip("/").rpartition("/")
    store = open_store(parent)
    if name.endswith(".safetensors"):  # a single-file checkpoint; otherwise a diffusers folder prefix
        return str(store.fetch_file(name, cache / name))
    return str(store.fetch_dataset(name, cache))


# -- routes -------------------------------------------------------------------------------------------------------

router = APIRouter()


@router.get("/ping")
async def ping(_loaded: Ready):
    """200 once the generator is loaded; 503 while loading, or with the reason the model could not load."""
    return {"status": "ready"}


@router.post("/invocations")
async def invocations(request: Request, state: Ready, loras: HostedLoraSet):
    body, kind = _parse_body(await request.body())
    problems = body.check_limits(state.settings.limits)
    if problems:
        raise ApiError(
            422,
            "; ".join(f"{'.'.join(map(str, p['loc'][1:]))}: {p['msg']}" for p in problems),
            error="ValidationError",
            errors=json.dumps(problems),
        )
    wants_png = _wants_png(request.headers.get("accept", ""))
    if wants_png and body.batch_size * body.n_iter > 1:
        raise ApiError(
            406,
            f"Accept: {PNG} returns one image and this request makes "
            f"{body.batch_size * body.n_iter}; ask for application/json for batches",
        )
    await _require_loras(body, state.generator.registry, loras)
    result = await run_generation(body, request, kind=kind)
    if wants_png:
        return Response(png_bytes(result.images[0], result.infotexts[0]), media_type=PNG)
    return a1111_response(body, result, kind=kind)


def _parse_body(raw: bytes) -> tuple[Txt2ImgBody, str]:
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(
            400,
            f"request body: not valid JSON ({exc}); send A1111 txt2img or img2img JSON",
            error=type(exc).__name__,
        ) from None
    if not isinstance(payload, dict):
        raise ApiError(
            400,
            f"request body: a JSON {type(payload).__name__}, not an object; send A1111 txt2img or img2img JSON",
            error="ValidationError",
        )
    kind = "img2img" if payload.get("init_images") else "txt2img"
    try:
        body = (Img2ImgBody if kind == "img2img" else Txt2ImgBody).model_validate(payload)
    except ValidationError as exc:
        problems = exc.errors(include_url=False, include_context=False)
        detail = "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in problems)
        raise ApiError(
            422,
            detail,
            error="ValidationError",
            errors=json.dumps(problems, default=str),
        ) from None
    return body, kind


def _wants_png(accept: str) -> bool:
    types = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return PNG in types and "application/json" not in types


async def _require_loras(body: Txt2ImgBody, registry, loras: HostedLoras) -> None:
    """Every LoRA the prompts name is on this instance (fetched from the prefix if need be), else a 404."""
    if body.disable_extra_networks:
        return
    names = {tag.name for text in (body.prompt, body.hr_prompt) for tag in parse_extra_networks(text).loras}
    for name in sorted(names):
        try:
            check_lora_name(name)
            if loras.looks_up(name):  # S3 round trips off the event loop; nothing to wait for otherwise
                await asyncio.to_thread(loras.fetch, name)
        except GenerationError as exc:
            raise ApiError(404, f"prompt: {exc}") from None
        except StoreError as exc:
            raise ApiError(
                503,
                f"<lora:{name}>: the LoRA store cannot be read ({exc}); retry later",
            ) from None
        if registry.resolve(name) is None:
            where = f" or {loras.prefix}{name}{LORA_SUFFIX}" if loras.prefix else ""
            known = ", ".join(sorted(entry.name for entry in registry.entries())) or "none"
            raise ApiError(
                404,
                f"prompt: <lora:{name}> not found in the endpoint's model{where}; LoRAs here: {known}",
                error="LoraNotFound",
            )


class OnlyHostingRoutes:
    """ASGI guard: this listener answers SageMaker's two routes and nothing else (no A1111 options, no page)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in HOSTING_PATHS:
            return await self.app(scope, receive, send)
        detail = f"{scope['path']}: not a SageMaker hosting route; use GET /ping or POST /invocations"
        await send_json(send, 404, error_body(detail))


def create_hosting_app(options: HostingOptions) -> FastAPI:
    app = create_app(options.server_settings(), loader=lambda: load_hosted_generator(app, options))
    app.include_router(router)
    app.add_middleware(OnlyHostingRoutes)
    return app


# -- the `serve` program -------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    env = os.environ
    parser = argparse.ArgumentParser(prog="serve", description="SageMaker hosting: /ping and /invocations")
    parser.add_argument(
        "--host",
        default=env.get("LORAPIPE_HOST", "0.0.0.0"),
        help="bind address (0.0.0.0: SageMaker reaches the container from outside it)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(env.get("SAGEMAKER_BIND_TO_PORT") or SERVING_PORT),
    )
    parser.add_argument("--opt-ml-root", help="SageMaker root (default: $LORAPIPE_OPT_ML or /opt/ml)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=env.get("LORAPIPE_HOSTING_CACHE") or HostingOptions().cache_dir,
        help="where S3 base models and LoRAs are kept",
    )
    parser.add_argument(
        "--device",
        default=env.get("LORAPIPE_DEVICE"),
        help="torch device (default: cuda if present)",
    )
    parser.add_argument("--dtype", default=env.get("LORAPIPE_DTYPE"), choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--queue-size", type=int, default=int(env.get("LORAPIPE_QUEUE_SIZE", 8)))
    parser.add_argument(
        "--timeout",
        type=float,
        default=float(env.get("LORAPIPE_TIMEOUT_S", 600)),
        help="seconds per request, queue wait included; also the SIGTERM drain limit",
    )
    parser.add_argument("--max-body-mb", type=float, default=float(env.get("LORAPIPE_MAX_BODY_MB", 64)))
    parser.add_argument("mode", nargs="?", default="serve", help="SageMaker passes 'serve'; ignored")
    args = parser.parse_args(argv)
    options = HostingOptions(
        opt_ml_root=args.opt_ml_root,
        cache_dir=Path(args.cache_dir),
        device=args.device,
        dtype=args.dtype,
        queue_size=args.queue_size,
        request_timeout_s=args.timeout,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import uvicorn

    # uvicorn's SIGTERM handling is the drain: stop accepting, let in-flight requests (each waiting on its queued
    # job) finish, then run the lifespan's shutdown, which stops the now idle worker.
    uvicorn.run(
        create_hosting_app(options),
        host=args.host,
        port=args.port,
        log_level="info",
        timeout_keep_alive=60,
        timeout_graceful_shutdown=int(options.request_timeout_s),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
