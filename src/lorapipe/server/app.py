"""The FastAPI app factory: A1111 routes, the studio, the web pages, guards, and a lifespan that loads the model.

`create_app(settings)` loads the base model inside the lifespan (so `--help` and imports stay fast and a bad
model path fails at startup with one line); tests pass a ready Generator instead. With `loader`, the app serves
at once and loads in the background (SageMaker hosting: /ping answers 503 until the model is there).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from importlib import resources

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from lorapipe import __version__
from lorapipe.server.api_errors import ApiError, handle_api_error, handle_unexpected, handle_validation_error
from lorapipe.server.deps import loaded_state
from lorapipe.server.guards import OPEN_PATHS, BasicAuthMiddleware, BodyLimitMiddleware
from lorapipe.server.jobs import JobQueue
from lorapipe.server.routes_generate import router as generate_router
from lorapipe.server.routes_info import router as info_router
from lorapipe.server.settings import ServerSettings
from lorapipe.server.state import ServerState
from lorapipe.server.studio_busy import TrainingBusyMiddleware
from lorapipe.server.studio_routes_datasets import presets_router as studio_presets_router
from lorapipe.server.studio_routes_datasets import router as studio_datasets_router
from lorapipe.server.studio_routes_runs import device_router as studio_device_router
from lorapipe.server.studio_routes_runs import router as studio_runs_router
from lorapipe.server.studio_state import StudioState

log = logging.getLogger(__name__)
PAGE_PATHS = ("/", "/ui/", "/studio", "/studio/")  # the web pages; with their files under /ui/ they hold no data


def create_app(settings: ServerSettings, generator=None, *, loader: Callable[[], object] | None = None) -> FastAPI:
    """Build the app. With `generator=None` the lifespan loads `settings.base_model` (+ `lora_dir`).

    `loader` (returns a Generator) runs in a background thread instead, after the app starts serving:
    `app.state.lorapipe` appears when it returns, `app.state.load_error` says why it failed."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if loader is not None:
            async with _loading_in_background(app, settings, loader):
                yield
            return
        gen = generator
        if gen is None:
            from lorapipe.generate.generator import Generator
            from lorapipe.generate.quiet import quiet_model_loading

            quiet_model_loading()
            gen = await asyncio.to_thread(
                Generator.load,
                settings.base_model,
                lora_dir=settings.lora_dir,
                device=settings.device,
                dtype=settings.dtype,
            )
        app.state.lorapipe = serving = _serving_state(settings, gen)
        app.state.studio = studio = StudioState.create(settings, gen)
        try:
            yield
        finally:
            await studio.feeds.close()
            await asyncio.to_thread(serving.jobs.stop)

    app = FastAPI(
        title="lorapipe",
        version=__version__,
        lifespan=lifespan,
        description="AUTOMATIC1111-compatible API for SDXL with LoRAs",
    )
    app.add_exception_handler(ApiError, handle_api_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(Exception, handle_unexpected)
    app.include_router(generate_router)
    app.include_router(info_router)
    app.include_router(studio_presets_router)
    app.include_router(studio_datasets_router)
    app.include_router(studio_runs_router)
    app.include_router(studio_device_router)

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

    @app.get("/studio/", include_in_schema=False)
    async def studio_page():
        return FileResponse(str(static_dir / "studio.html"))

    @app.get("/studio", include_in_schema=False)
    async def studio_redirect():
        return RedirectResponse("/studio/")

    app.mount("/ui", StaticFiles(directory=str(static_dir)), name="ui")

    # add_middleware wraps: the last added runs first. Order on the way in: size cap, CORS (so browser
    # preflights get answered without credentials), auth, then the training-busy guard of generation routes.
    app.add_middleware(TrainingBusyMiddleware, policy=settings.studio.busy_policy, timeout_s=settings.request_timeout_s)
    if settings.api_auth:  # the pages load without credentials, then sign in with their own form (static/auth.js)
        page_files = {f"/ui/{entry.name}" for entry in static_dir.iterdir() if entry.is_file()}
        app.add_middleware(
            BasicAuthMiddleware,
            credentials=settings.api_auth,
            open_paths=OPEN_PATHS | set(PAGE_PATHS) | page_files,
        )
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
            allow_credentials=True,
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_body_bytes)
    return app


def _serving_state(settings: ServerSettings, generator) -> ServerState:
    jobs = JobQueue(generator, maxsize=settings.queue_size)
    jobs.start()
    return ServerState(settings=settings, generator=generator, jobs=jobs)


@contextlib.asynccontextmanager
async def _loading_in_background(app: FastAPI, settings: ServerSettings, loader: Callable[[], object]):
    """Run `loader` in a daemon thread (a stop during a long load must not wait for it) while the app serves."""
    app.state.load_error = None
    finished: concurrent.futures.Future = concurrent.futures.Future()

    def load() -> None:
        try:
            finished.set_result(loader())
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task, which reports it
            finished.set_exception(exc)

    async def install() -> None:
        try:
            generator = await asyncio.wrap_future(finished)
        except Exception as exc:  # noqa: BLE001 - process boundary: a failed load answers 503, never a crash loop
            app.state.load_error = str(exc) or type(exc).__name__
            log.error("model not loaded: %s", app.state.load_error)
            return
        app.state.lorapipe = _serving_state(settings, generator)
        log.info("model loaded; serving")

    threading.Thread(target=load, name="lorapipe-model-loader", daemon=True).start()
    installing = asyncio.create_task(install())
    try:
        yield
    finally:
        installing.cancel()
        state = loaded_state(app)
        if state is not None:
            await asyncio.to_thread(state.jobs.stop)
