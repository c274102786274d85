"""A1111 generation routes: txt2img, img2img, progress, interrupt, skip (+ the UI's /internal/progress).

A request is checked by the generator before it is queued (its GenerationError becomes a 4xx naming the field),
queued (503 when full), then awaited while the client is watched: a client that goes away cancels its job between
denoising steps, and a server shutting down cancels it with a 503.
"""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from lorapipe.errors import GenerationError
from lorapipe.generate.control import SHUTDOWN_REASON, GenerationCancelled, JobControl
from lorapipe.generate.generator import GenerationRequest, GenerationResult
from lorapipe.generate.infotext import png_bytes
from lorapipe.generate.samplers import SamplerNotFound
from lorapipe.server.api_errors import ApiError
from lorapipe.server.deps import serving_state
from lorapipe.server.images import decode_image, encode_png
from lorapipe.server.jobs import Job, QueueClosed, QueueFull, new_task_id
from lorapipe.server.schemas import Img2ImgBody, Txt2ImgBody
from lorapipe.server.state import ServerState

router = APIRouter()
_DISCONNECT_POLL_S = 0.1


@router.post("/sdapi/v1/txt2img")
async def txt2img(body: Txt2ImgBody, request: Request):
    return await _generate(body, request, kind="txt2img")


@router.post("/sdapi/v1/img2img")
async def img2img(body: Img2ImgBody, request: Request):
    return await _generate(body, request, kind="img2img")


async def _generate(body: Txt2ImgBody, request: Request, *, kind: str):
    problems = body.check_limits(serving_state(request).settings.limits)
    if problems:
        return JSONResponse({"detail": problems}, status_code=422)
    return a1111_response(body, await run_generation(body, request, kind=kind), kind=kind)


async def run_generation(body: Txt2ImgBody, request: Request, *, kind: str) -> GenerationResult:
    """Queue one request (already within the limits) and await its images; the A1111 routes and SageMaker
    hosting's /invocations both go through here."""
    state = serving_state(request)
    generation = _to_generation_request(body, state)
    task_id = body.force_task_id or new_task_id(kind)
    control = JobControl(deadline=time.monotonic() + state.settings.request_timeout_s)
    try:
        job = state.jobs.submit(task_id, generation, control)
    except QueueFull as full:
        raise ApiError(
            503,
            "server busy: the generation queue is full; retry later",
            headers={"Retry-After": str(full.retry_after_s)},
        ) from None
    except QueueClosed:
        raise ApiError(503, "server shutting down; retry on another instance or after the restart") from None
    try:
        result = await _wait(job, request)
    except GenerationCancelled as exc:
        if "timed out" in str(exc):
            raise ApiError(504, f"{exc}; the limit is {state.settings.request_timeout_s:g} s") from None
        if SHUTDOWN_REASON in str(exc):
            raise ApiError(503, f"{exc}; retry after the restart") from None
        raise ApiError(499, str(exc)) from None
    except GenerationError as exc:
        raise ApiError(400, str(exc)) from None
    return result


def _to_generation_request(body: Txt2ImgBody, state: ServerState) -> GenerationRequest:
    if body.script_name:
        raise ApiError(422, f"Script '{body.script_name}' not found")
    for title in body.alwayson_scripts:
        raise ApiError(422, f"always on script {title} not found")
    hires = body.hires_fix()
    if (
        hires
        and body.hr_checkpoint_name not in (None, "", "Use same checkpoint")
        and body.hr_checkpoint_name not in state.generator.model.aliases()
    ):
        raise ApiError(404, f"Could not find checkpoint with name {body.hr_checkpoint_name}")
    init_images: tuple = ()
    inpaint = None
    if isinstance(body, Img2ImgBody):
        if not body.init_images:
            raise ApiError(404, "Init image not found")
        limit = state.settings.limits.max_pixels
        init_images = tuple(
            decode_image(data, max_pixels=limit, field=f"init_images[{i}]") for i, data in enumerate(body.init_images)
        )
        inpaint = _inpaint_options(body, limit)
    optional = {"denoising_strength": body.denoising_strength} if body.denoising_strength is not None else {}
    generation = GenerationRequest(
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        steps=body.steps,
        cfg_scale=body.cfg_scale,
        width=body.width,
        height=body.height,
        seed=body.seed,
        subseed=body.subseed,
        subseed_strength=body.subseed_strength,
        batch_size=body.batch_size,
        n_iter=body.n_iter,
        sampler_name=body.sampler_name or body.sampler_index,
        scheduler=body.scheduler,
        init_images=init_images,
        apply_loras=not body.disable_extra_networks,
        hires=hires,
        inpaint=inpaint,
        resize_mode=body.resize_mode if isinstance(body, Img2ImgBody) else 0,
        **optional,
    )
    try:
        state.generator.check(generation)  # the generator's own checks, before the request takes a queue slot
    except SamplerNotFound:
        raise ApiError(404, "Sampler not found") from None  # A1111's answer
    except GenerationError as exc:
        raise ApiError(422, str(exc)) from None
    return generation


def _inpaint_options(body: Img2ImgBody, max_pixels: int):
    """The request's mask group, or None without a mask; a mask that is not an image is a 422 naming `mask`."""
    if body.latent_mask:
        raise ApiError(422, "latent_mask: a separate latent mask is not supported; send only mask")
    if not body.mask:
        return None
    mask = decode_image(body.mask, max_pixels=max_pixels, field="mask")
    return body.inpaint_options(mask)


async def _wait(job: Job, request: Request) -> GenerationResult:
    """Await the job; cancel it if the client disconnects meanwhile."""
    future = asyncio.wrap_future(job.future)
    while True:
        done, _ = await asyncio.wait({future}, timeout=_DISCONNECT_POLL_S)
        if done:
            return future.result()
        if await request.is_disconnected():
            job.control.cancel("client disconnected")


def a1111_response(body: Txt2ImgBody, result: GenerationResult, *, kind: str) -> dict:
    """A1111's `{"images", "parameters", "info"}` for a finished request."""
    images = [encode_png(png_bytes(img, text)) for img, text in zip(result.images, result.infotexts)]
    parameters = body.model_dump()
    if kind == "img2img" and not parameters.get("include_init_images"):
        parameters["init_images"] = None
        parameters["mask"] = None
    return {"images": images if body.send_images else [], "parameters": parameters, "info": json.dumps(_info(result))}


def _info(result: GenerationResult) -> dict:
    """A1111 `Processed.js()` keys, in order, plus `comments` with warnings such as unknown LoRAs."""
    request = result.request
    total = len(result.images)
    prompts = [request.prompt] * total
    negatives = [request.negative_prompt] * total
    extra = {"Schedule type": result.schedule_label, **result.extra_params}
    if result.hires_target is not None:
        denoising = request.hires.denoising_strength
    else:
        denoising = request.denoising_strength if request.init_images else None
    return {
        "prompt": request.prompt,
        "all_prompts": prompts,
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": negatives,
        "seed": result.seeds[0],
        "all_seeds": list(result.seeds[:total]),
        "subseed": result.subseeds[0],
        "all_subseeds": list(result.subseeds[:total]),
        "subseed_strength": request.subseed_strength,
        "width": request.width,
        "height": request.height,
        "sampler_name": result.sampler_name,
        "cfg_scale": request.cfg_scale,
        "steps": request.steps,
        "batch_size": request.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": result.model.name,
        "sd_model_hash": result.model.short_hash,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": denoising,
        "extra_generation_params": extra,
        "index_of_first_image": 0,
        "infotexts": list(result.infotexts),
        "styles": [],
        "job_timestamp": result.job_timestamp,
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": "lorapipe",
        "comments": "\n".join(result.warnings),
        "warnings": list(result.warnings),
        "interrupted": result.interrupted,
    }


# -- progress, interrupt, skip ------------------------------------------------------------------------------


def _job_for(state: ServerState, id_task: str | None) -> Job | None:
    if id_task:
        return state.jobs.find(id_task)[1]
    return state.jobs.current()


@router.get("/sdapi/v1/progress")
async def progress(request: Request, skip_current_image: bool = False, id_task: str | None = None):
    """A1111 progress of the running job, or of `id_task` (a lorapipe extension: per-job progress)."""
    state = serving_state(request)
    job = _job_for(state, id_task)
    pending = state.jobs.pending_count()
    if job is None:
        return {
            "progress": 0.0,
            "eta_relative": 0.0,
            "state": {
                "skipped": False,
                "interrupted": False,
                "stopping_generation": False,
                "job": "",
                "job_count": 1 if pending else 0,
                "job_timestamp": "0",
                "job_no": 0,
                "sampling_step": 0,
                "sampling_steps": 0,
                "queued": pending,
            },
            "current_image": None,
            "textinfo": None,
        }
    snap = job.control.snapshot()
    fraction = snap.fraction if snap.started_at is not None else 0.0
    elapsed = time.monotonic() - snap.started_at if snap.started_at is not None else 0.0
    eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
    return {
        "progress": fraction,
        "eta_relative": eta,
        "state": {
            "skipped": snap.skipped,
            "interrupted": snap.interrupted,
            "stopping_generation": False,
            "job": job.task_id,
            "job_count": max(snap.job_count, 1),
            "job_timestamp": "0",
            "job_no": snap.job_no,
            "sampling_step": snap.sampling_step,
            "sampling_steps": snap.sampling_steps,
            "queued": pending,
        },
        "current_image": None,
        "textinfo": None,
    }


@router.post("/sdapi/v1/interrupt")
async def interrupt(request: Request, id_task: str | None = None):
    """Stop sampling the running job (or `id_task`); it returns the images decoded so far."""
    job = _job_for(serving_state(request), id_task)
    if job is not None:
        job.control.interrupt()
    return {}


@router.post("/sdapi/v1/skip")
async def skip(request: Request, id_task: str | None = None):
    job = _job_for(serving_state(request), id_task)
    if job is not None:
        job.control.skip()
    return None


class InternalProgressBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id_task: str = ""
    id_live_preview: int = -1
    live_preview: bool = False


@router.post("/internal/progress")
async def internal_progress(body: InternalProgressBody, request: Request):
    """A1111's per-task progress (the route its own web page polls)."""
    where, job = serving_state(request).jobs.find(body.id_task)
    fraction, eta, text = 0.0, None, None
    if where == "active" and job is not None:
        snap = job.control.snapshot()
        fraction = snap.fraction if snap.started_at is not None else 0.0
        elapsed = time.monotonic() - snap.started_at if snap.started_at else 0.0
        eta = elapsed / fraction - elapsed if fraction > 0 else None
        text = f"Step {snap.sampling_step}/{snap.sampling_steps}, batch {snap.job_no + 1}/{snap.job_count}"
    elif where == "queued":
        text = "In queue..."
    return {
        "active": where == "active",
        "queued": where == "queued",
        "completed": where == "completed",
        "progress": fraction,
        "eta": eta,
        "live_preview": None,
        "id_live_preview": -1,
        "textinfo": text,
    }
