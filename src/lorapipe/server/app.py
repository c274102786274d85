"""The FastAPI app factory: A1111 routes, the web page, guards, and a lifespan that loads the model.

`create_app(settings)` loads the base model inside the lifespan (so `--help` and imports stay fast and a bad
model path fails at startup with one line); tests pass a ready Generator instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from lorapipe import __version__
from lorapipe.server.api_errors import ApiError, handle_api_error, handle_unexpected
from lorapipe.server.guards import BasicAuthMiddleware, BodyLimitMiddleware
from lorapipe.server.jobs import JobQueue
from lorapipe.server.routes_generate import router as generate_router
from lorapipe.server.routes_info import router as info_router
from lorapipe.server.settings import ServerSettings
from lorapipe.server.state import ServerState


def create_app(settings: ServerSettings, generator=None) -> FastAPI:
    """Build the app. With `generator=None` the lifespan loads `settings.base_model` (+ `lora_dir`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        gen = generator
        if gen is None:
            from lorapipe.generate.generator import Generator
            from lorapipe.generate.quiet import quiet_model_loading

            quiet_model_loading()
            gen = await asyncio.to_thread(Generator.load, settings.base_model, lora_dir=settings.lora_dir,
                                          device=settings.device, dtype=settings.dtype)
        jobs = JobQueue(gen, maxsize=settings.queue_size)
        jobs.start()
        app.state.lorapipe = ServerState(settings=settings, generator=gen, jobs=jobs)
        try:
            yield
        finally:
            await asyncio.to_thread(jobs.stop)

    app = FastAPI(title="lorapipe", version=__version__, lifespan=lifespan,
                  description="AUTOMATIC1111-compatible API for SDXL with LoRAs")
    app.add_exception_handler(ApiError, handle_api_error)
    app.add_exception_handler(Exception, handle_unexpected)
    app.include_router(generate_router)
    app.include_router(info_router)

    @app.get("/internal/ping")
    async def ping():
        return {}

    static_dir = resources.files("lorapipe.server") / "static"

    @app.get("/", include_in_schema=False)
    async def index():
        return RedirectResponse("/ui/")

    @app.get("/ui/", include_in_schema=False)
    async def page():
        return FileResponse(str(static_dir / "index.html"))

    app.mount("/ui", StaticFiles(directory=str(static_dir)), name="ui")

    # add_middleware wraps: the last added runs first. Order on the way in: size cap, CORS (so browser
    # preflights get answered without credentials), then auth.
    if settings.api_auth:
        app.add_middleware(BasicAuthMiddleware, credentials=settings.api_auth)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=True)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_body_bytes)
    return app
