"""What the studio's routes share (datasets, runs, the LoRA folder the generator reads), and its error mapping.

Library errors become HTTP answers here, once: unknown ids 404, a busy device 409, bad input 422 naming the field
or file, each in the A1111 error shape the rest of the server answers with.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from lorapipe.config.load import ConfigProblems
from lorapipe.errors import ConfigError, DatasetError, LorapipeError, PipelineError, StoreError
from lorapipe.pipeline.request import PipelineHome, RunRequest
from lorapipe.server.api_errors import ApiError
from lorapipe.server.settings import ServerSettings
from lorapipe.server.studio_datasets import DatasetNotFound, StudioDatasets
from lorapipe.server.studio_follow import RunFeeds
from lorapipe.server.studio_runs import DeviceBusy, RunNotFound, StudioRuns
from lorapipe.server.studio_uploads import UploadTooLarge

T = TypeVar("T")


@dataclass(frozen=True)
class StudioState:
    settings: ServerSettings
    home: PipelineHome
    datasets: StudioDatasets
    runs: StudioRuns
    feeds: RunFeeds  # the server-sent event feeds of followed runs, one watcher per run
    lora_dir: Path | None  # the folder the generator's registry reads (None: publishing is refused)
    registry: object | None  # the generator's LoraRegistry, refreshed after a publish

    @classmethod
    def create(cls, settings: ServerSettings, generator) -> StudioState:
        home = PipelineHome.resolve(settings.studio.home)
        registry = getattr(generator, "registry", None)
        root = getattr(registry, "root", None) or settings.lora_dir
        lora_dir = Path(root) if root else None
        base_model = settings.base_model or _model_source(generator)
        runs = StudioRuns(
            home,
            base_model=base_model,
            lora_dir=str(lora_dir) if lora_dir else None,
            template=_run_template(settings.studio.run_template),
        )
        datasets = StudioDatasets(home.root / "studio" / "datasets", settings.studio, base_model=base_model)
        feeds = RunFeeds(lambda run_id: call_in_thread(runs.current_snapshot, run_id))
        return cls(settings, home, datasets, runs, feeds, lora_dir, registry)


def _run_template(path: str | None) -> RunRequest | None:
    """The server's run template: a run request JSON (`request.json` of any run is one); its dataset is replaced."""
    if not path:
        return None
    import json

    try:
        data = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
        return RunRequest.from_json({"dataset": "", **data})
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"--studio-run-template {path}: not a run request JSON ({exc}); copy a run's "
            "request.json and keep the keys you need"
        ) from None


def _model_source(generator) -> str | None:
    """The base model the generator loaded (a test app gets a ready generator and no --base-model)."""
    location = getattr(getattr(generator, "model", None), "location", None)
    return str(location) if location else None


def as_api_error(exc: LorapipeError) -> ApiError:
    """One place that decides the status of every studio failure."""
    if isinstance(exc, RunNotFound | DatasetNotFound):
        return ApiError(404, str(exc))
    if isinstance(exc, DeviceBusy):
        return ApiError(409, str(exc), headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, ConfigProblems):
        return ApiError(
            422, f"config: {len(exc.errors)} problem(s): " + "; ".join(exc.errors), errors="\n".join(exc.errors)
        )
    if isinstance(exc, UploadTooLarge):
        return ApiError(413, str(exc))
    if isinstance(exc, ConfigError | DatasetError):
        return ApiError(422, str(exc))
    if isinstance(exc, PipelineError):
        return ApiError(409, str(exc))
    if isinstance(exc, StoreError):
        return ApiError(500, str(exc))
    return ApiError(400, str(exc))


def call(function: Callable[..., T], *args, **kwargs) -> T:
    """Run a studio operation, turning lorapipe errors into HTTP answers."""
    try:
        return function(*args, **kwargs)
    except LorapipeError as exc:
        raise as_api_error(exc) from None


async def call_in_thread(function: Callable[..., T], *args, **kwargs) -> T:
    """`call` off the event loop (file and database work, prepare, captioning)."""
    return await asyncio.to_thread(call, function, *args, **kwargs)
