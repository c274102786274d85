"""Studio training-run routes under /studio/api/runs: start, list, follow (polling or server-sent events), cancel,
resume, files and publishing a checkpoint into the generator's LoRA folder."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from lorapipe.errors import LorapipeError
from lorapipe.pipeline.publish import check_publish_name
from lorapipe.pipeline.records import FINISHED
from lorapipe.server.api_errors import ApiError
from lorapipe.server.deps import Studio
from lorapipe.server.studio_config import TrainSettings, run_config_text
from lorapipe.server.studio_settings import BUSY_EFFECTS
from lorapipe.server.studio_state import StudioState, call, call_in_thread

router = APIRouter(prefix="/studio/api/runs", tags=["studio: training runs"])
device_router = APIRouter()


class RunBody(BaseModel):
    """A run from a prepared studio dataset; the config is the dataset's (from its preset) or `config_toml`."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="studio dataset id (from POST /studio/api/datasets)")
    config_toml: str | None = Field(
        None, max_length=200_000, description="a Kohya training TOML replacing the dataset's own config"
    )
    steps: int | None = Field(None, ge=1, le=100_000, description="max_train_steps")
    rank: int | None = Field(None, ge=1, le=1024, description="network_dim")
    learning_rate: float | None = Field(
        None, gt=0, le=1, description="learning_rate (and unet_lr when the TOML sets it)"
    )
    checkpoints: int = Field(4, ge=1, le=100, description="LoRA files (with sample images) across the run")
    lora_name: str | None = Field(None, max_length=100, description="name the finished LoRA is published under")


class PublishBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(description="a checkpoint name from the run's file list")
    lora_name: str | None = Field(None, max_length=100, description="default: <checkpoint>-<run suffix>")


def _start(state: StudioState, body: RunBody) -> dict:
    dataset_dir = state.datasets.prepared_dir(body.dataset)
    if body.lora_name:
        check_publish_name(body.lora_name)  # the publish step's own rule, before any training
    settings = TrainSettings(
        steps=body.steps, rank=body.rank, learning_rate=body.learning_rate, checkpoints=body.checkpoints
    )
    config, written = state.datasets.save_config(body.dataset, run_config_text(dataset_dir, body.config_toml, settings))
    try:
        warnings = state.runs.check_config(dataset_dir, config)
    except LorapipeError:
        if written:  # a refused TOML is not left behind
            config.unlink(missing_ok=True)
        raise
    record = state.runs.start(dataset_dir, config=config, lora_name=body.lora_name)
    return {**state.runs.snapshot(record.id), "warnings": list(warnings)}


@router.post("", status_code=201, summary="Start a training run from a prepared dataset")
async def start_run(body: RunBody, state: Studio):
    return await call_in_thread(_start, state, body)


def _device(state: StudioState) -> dict:
    run = state.runs.training_run()
    policy = state.settings.studio.busy_policy
    return {
        "busy_policy": policy,
        "generation": BUSY_EFFECTS[policy],
        "training_run": run.id if run else None,
        "retry_after_s": state.runs.retry_after(run) if run else None,
    }


@device_router.get(
    "/studio/api/device",
    tags=["studio: training runs"],
    summary="Whether a training run holds the accelerator, and what generation requests get meanwhile",
)
async def device(state: Studio):
    return await call_in_thread(_device, state)


@router.get("", summary="Recent runs (the same records `lorapipe runs list` shows)")
async def list_runs(state: Studio, limit: int = 50):
    records = await call_in_thread(state.runs.list, max(1, min(limit, 500)))
    return [
        {
            "id": r.id,
            "status": r.status,
            "dataset": r.dataset,
            "backend": r.backend,
            "created": r.created,
            "error": r.error,
        }
        for r in records
    ]


@router.get(
    "/{run_id}",
    summary="A run's status, step, loss series, lr, ETA, checkpoints and sample images",
    description="Answers with an ETag; a poll that sends it back in If-None-Match gets 304 with no body until the "
    "run changes. The snapshot is rebuilt only when the run's files change, however many clients poll.",
    responses={304: {"description": "Not Modified: the run is as the ETag in If-None-Match says"}},
)
async def get_run(run_id: str, request: Request, state: Studio):
    snapshot = state.runs.cached_snapshot(run_id) or await call_in_thread(state.runs.current_snapshot, run_id)
    headers = {"ETag": snapshot.etag, "Cache-Control": "no-cache"}  # no-cache: keep it, but ask before reusing it
    if _etags(request.headers.get("if-none-match")) & {snapshot.etag, "*"}:
        return Response(status_code=304, headers=headers)
    return Response(snapshot.body, media_type="application/json", headers=headers)


def _etags(header: str | None) -> set[str]:
    """The entity tags of an If-None-Match header (weak ones compare equal to strong ones, as RFC 9110 says)."""
    if not header:
        return set()
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


@router.get(
    "/{run_id}/events",
    summary="Server-sent events: the run's snapshot whenever it changes, until it ends",
    response_class=StreamingResponse,
)
async def run_events(run_id: str, state: Studio):
    await call_in_thread(state.runs.get, run_id)  # uncached: a deleted run is a 404, not its last snapshot
    current = await call_in_thread(state.runs.current_snapshot, run_id)
    if current.status in FINISHED:
        raise ApiError(
            410,
            f"run {run_id}: already {current.status}; nothing to follow (GET /studio/api/runs/{run_id} shows how it "
            "ended)",
        )

    async def stream():
        try:
            async for snapshot in state.feeds.follow(run_id):  # one watcher per run, shared by every follower
                if snapshot is None:
                    yield ": keep-alive\n\n"
                    continue
                yield f"id: {snapshot.step}\nevent: run\ndata: {snapshot.body.decode()}\n\n"
                if snapshot.status in FINISHED:
                    yield f"event: end\ndata: {json.dumps({'status': snapshot.status})}\n\n"
                    return
        except ApiError as exc:  # deleted while followed: say so and end the stream
            yield f"event: gone\ndata: {json.dumps({'detail': exc.detail})}\n\n"

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


@router.post("/{run_id}/cancel", summary="Cancel a run (the trainer saves its state, so the run can be resumed)")
async def cancel_run(run_id: str, state: Studio):
    record = await call_in_thread(state.runs.cancel, run_id)
    return {"id": record.id, "status": record.status}


@router.post("/{run_id}/resume", status_code=201, summary="A new run that goes on from a cancelled run's state")
async def resume_run(run_id: str, state: Studio):
    record = await call_in_thread(state.runs.resume, run_id)
    return await call_in_thread(state.runs.snapshot, record.id)


@router.get("/{run_id}/files", summary="The run's LoRA files (checkpoints and final) with their sample images")
async def run_files(run_id: str, state: Studio):
    snapshot = await call_in_thread(state.runs.snapshot, run_id)
    return snapshot["checkpoints"]


@router.get("/{run_id}/files/{name:path}", summary="Download a LoRA file, sample image or train_summary.json")
async def run_file(run_id: str, name: str, state: Studio):
    path = await call_in_thread(state.runs.file, run_id, name)
    download = path.suffix == ".safetensors"
    return FileResponse(
        path, filename=path.name if download else None, content_disposition_type="attachment" if download else "inline"
    )


@router.post("/{run_id}/publish", summary="Put a checkpoint into the generator's LoRA folder; returns its prompt tag")
async def publish(run_id: str, body: PublishBody, state: Studio):
    if state.lora_dir is None:
        raise ApiError(409, "lora_dir: the server has no LoRA folder; start it with --lora-dir")
    entry = await call_in_thread(state.runs.publish, run_id, body.checkpoint, body.lora_name, state.lora_dir)
    if state.registry is not None:
        await asyncio.to_thread(call, state.registry.refresh)
    return {**entry, "tag": f"<lora:{entry['name']}:1>"}
