"""A1111 catalogue and utility routes: options, sd-models, samplers, schedulers, loras, png-info, memory, scripts.

Routes that A1111 clients call but lorapipe has nothing behind (VAEs, styles, hypernetworks...) answer with A1111's
empty shapes, because clients such as webuiapi call `.json()` on every answer.
"""

from __future__ import annotations

import json
import os

from fastapi import APIRouter, Request

from lorapipe.generate.hires import latent_mode_listing, upscaler_listing
from lorapipe.generate.infotext import parse_infotext, read_infotext
from lorapipe.generate.samplers import sampler_listing, schedule_listing
from lorapipe.server.api_errors import ApiError
from lorapipe.server.deps import serving_state
from lorapipe.server.images import decode_image
from lorapipe.server.schemas import PngInfoBody
from lorapipe.server.state import SETTABLE_OPTIONS

router = APIRouter()
# A1111 lists these metadata keys first (extensions-builtin/Lora/network.py).
_METADATA_FIRST = ("ss_sd_model_name", "ss_resolution", "ss_clip_skip", "ss_num_train_images", "ss_tag_frequency")


@router.get("/sdapi/v1/options")
async def get_options(request: Request):
    state = serving_state(request)
    model = state.generator.model
    with state.options_lock:
        stored = dict(state.options)
    return {
        "samples_format": "png",
        "show_progress_every_n_steps": -1,
        **stored,
        "sd_model_checkpoint": model.title,
        "sd_checkpoint_hash": model.sha256,
    }


@router.post("/sdapi/v1/options")
async def set_options(request: Request):
    """Accept the model checkpoint (only the loaded one exists) and a small safe subset; ignore the rest."""
    state = serving_state(request)
    try:
        values = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError:
        raise ApiError(422, "options: body is not JSON") from None
    if not isinstance(values, dict):
        raise ApiError(422, "options: body must be a JSON object of setting -> value")
    checkpoint = values.get("sd_model_checkpoint")
    if checkpoint is not None and checkpoint not in state.generator.model.aliases():
        raise ApiError(
            422,
            f"sd_model_checkpoint: model '{checkpoint}' not found; this server has only "
            f"'{state.generator.model.title}' (see /sdapi/v1/sd-models)",
        )
    with state.options_lock:
        for key, kind in SETTABLE_OPTIONS.items():
            if key in values and key != "sd_model_checkpoint":
                try:
                    state.options[key] = kind(values[key])
                except (TypeError, ValueError):
                    raise ApiError(422, f"options: {key} must be {kind.__name__}") from None
    return None


@router.get("/sdapi/v1/sd-models")
async def sd_models(request: Request):
    model = serving_state(request).generator.model
    return [
        {
            "title": model.title,
            "model_name": model.name,
            "hash": model.short_hash,
            "sha256": model.sha256,
            "filename": model.filename,
            "config": None,
        }
    ]


@router.post("/sdapi/v1/refresh-checkpoints")
async def refresh_checkpoints():
    return None


@router.get("/sdapi/v1/samplers")
async def samplers():
    return sampler_listing()


@router.get("/sdapi/v1/schedulers")
async def schedulers():
    return schedule_listing()


@router.get("/sdapi/v1/loras")
async def loras(request: Request):
    """A1111's list: name (stem), alias (ss_output_name), path (relative to --lora-dir), metadata."""
    registry = serving_state(request).generator.registry
    root = registry.root
    return [
        {
            "name": e.name,
            "alias": e.alias,
            "path": os.path.relpath(e.path, root) if root else e.path.name,
            "metadata": _display_metadata(e.metadata),
        }
        for e in registry.entries()
    ]


@router.post("/sdapi/v1/refresh-loras")
async def refresh_loras(request: Request):
    serving_state(request).generator.registry.refresh()
    return None


@router.post("/sdapi/v1/png-info")
async def png_info(body: PngInfoBody, request: Request):
    if not body.image:
        raise ApiError(404, "Image not found")
    image = decode_image(body.image, max_pixels=serving_state(request).settings.limits.max_pixels, field="image")
    text, items = read_infotext(image)
    return {"info": text or "", "items": items, "parameters": parse_infotext(text) if text else {}}


@router.get("/sdapi/v1/memory")
async def memory():
    return {"ram": _ram(), "cuda": _cuda()}


@router.get("/sdapi/v1/scripts")
async def scripts():
    return {"txt2img": [], "img2img": []}


@router.get("/sdapi/v1/script-info")
async def script_info():
    return []


@router.get("/sdapi/v1/upscalers")
async def upscalers():
    """The hires-fix image upscalers that need no model (A1111 lists ESRGAN & co. here too when installed)."""
    return upscaler_listing()


@router.get("/sdapi/v1/latent-upscale-modes")
async def latent_upscale_modes():
    return latent_mode_listing()


@router.get("/sdapi/v1/embeddings")
async def embeddings():
    return {"loaded": {}, "skipped": {}}


def _empty_list():
    return []


for _path in ("sd-vae", "hypernetworks", "face-restorers", "realesrgan-models", "prompt-styles", "extensions"):
    router.add_api_route(f"/sdapi/v1/{_path}", _empty_list, methods=["GET"])


def _display_metadata(metadata) -> dict:
    ordered = {k: metadata[k] for k in _METADATA_FIRST if k in metadata}
    ordered.update({k: v for k, v in metadata.items() if k not in ordered and k != "ssmd_cover_images"})
    decoded = {}
    for key, value in ordered.items():
        if isinstance(value, str) and value[:1] in "{[":
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        decoded[key] = value
    return decoded


def _ram() -> dict:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = page * os.sysconf("SC_PHYS_PAGES")
        free = page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError) as exc:
        return {"error": str(exc)}
    return {"free": free, "used": total - free, "total": total}


def _cuda() -> dict:
    import sys

    torch = sys.modules.get("torch")  # loaded by the generator already; never imported just for this
    if torch is None or not torch.cuda.is_available():
        return {"error": "unavailable"}
    free, total = torch.cuda.mem_get_info()
    stats = torch.cuda.memory_stats()

    def pair(name: str) -> dict:
        return {"current": stats.get(f"{name}.all.current", 0), "peak": stats.get(f"{name}.all.peak", 0)}

    return {
        "system": {"free": free, "used": total - free, "total": total},
        "active": pair("active_bytes"),
        "allocated": pair("allocated_bytes"),
        "reserved": pair("reserved_bytes"),
        "inactive": pair("inactive_split_bytes"),
        "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
    }
