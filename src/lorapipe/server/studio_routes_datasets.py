"""Studio dataset routes under /studio/api/datasets: create, upload photos (files or a zip), prepare, the check
report, captions (read, edit, caption all with the captioner) and the prepared config."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, UploadFile
from fastapi.responses import FileResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from lorapipe.file_names import DATASET_CONFIG_NAME
from lorapipe.server.api_errors import ApiError
from lorapipe.server.deps import Studio
from lorapipe.server.studio_config import TrainSettings, preset_choices, run_config_text
from lorapipe.server.studio_datasets import PREPARED
from lorapipe.server.studio_state import call_in_thread

router = APIRouter(prefix="/studio/api/datasets", tags=["studio: datasets"])
presets_router = APIRouter()
ZIP_TYPES = ("application/zip", "application/x-zip-compressed")


class DatasetBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trigger: str = Field(description="the trigger word the LoRA learns (one word, e.g. dwjz)")
    class_name: str | None = Field(None, description="what the subject is (e.g. toy, woman, dog)")


class PrepareBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: str = Field("subject", description="a `dataset prepare` preset")
    steps: int | None = Field(None, ge=1, le=100_000, description="training steps the repeats are planned for")


class RenderBody(BaseModel):
    """The page's settings (and its edited TOML, if any); the same fields a run takes."""

    model_config = ConfigDict(extra="ignore")

    config_toml: str | None = Field(None, max_length=200_000)
    steps: int | None = Field(None, ge=1, le=100_000)
    rank: int | None = Field(None, ge=1, le=1024)
    learning_rate: float | None = Field(None, gt=0, le=1)
    checkpoints: int = Field(4, ge=1, le=100)


class CaptionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    caption: str = Field(max_length=10_000)


class CaptionAllBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overwrite: bool = Field(False, description="replace captions that already exist (edited ones included)")


@presets_router.get("/studio/api/presets", tags=["studio: datasets"], summary="Training presets `prepare` offers")
async def presets(state: Studio):
    return list(preset_choices(state.settings.studio))


@router.post("", status_code=201, summary="Create an empty dataset for a subject")
async def create_dataset(body: DatasetBody, state: Studio):
    return await call_in_thread(state.datasets.create, trigger=body.trigger, class_name=body.class_name)


@router.get("", summary="The studio's datasets, newest first")
async def list_datasets(state: Studio):
    return await call_in_thread(state.datasets.list)


@router.get("/{dataset_id}", summary="A dataset: trigger, class, photos and what prepare did")
async def get_dataset(dataset_id: str, state: Studio):
    meta = await call_in_thread(state.datasets.meta, dataset_id)
    return {**meta, "photos": await call_in_thread(state.datasets.photos, dataset_id)}


@router.post(
    "/{dataset_id}/photos",
    status_code=201,
    summary="Upload photos (PNG, JPEG, WebP, BMP) or zips of them; all are stored or none",
)
async def upload_photos(
    dataset_id: str, files: Annotated[list[UploadFile], File(description="photos or .zip files")], state: Studio
):
    uploads = [(f.file, f.filename, _is_zip(f)) for f in files]
    try:
        stored = await call_in_thread(state.datasets.add_photos, dataset_id, uploads)
    finally:
        for upload in files:
            await upload.close()
    return [photo.to_json() for photo in stored]


def _is_zip(upload: UploadFile) -> bool:
    if (upload.content_type or "").lower() in ZIP_TYPES or (upload.filename or "").lower().endswith(".zip"):
        return True
    head = upload.file.read(4)
    upload.file.seek(0)
    return head == b"PK\x03\x04"


@router.delete("/{dataset_id}/photos/{name}", status_code=204, summary="Remove one photo")
async def delete_photo(dataset_id: str, name: str, state: Studio):
    await call_in_thread(state.datasets.remove_photo, dataset_id, name)


@router.get("/{dataset_id}/photos/{name}", summary="An uploaded photo (for thumbnails)", response_class=FileResponse)
async def photo(dataset_id: str, name: str, state: Studio):
    return FileResponse(await call_in_thread(state.datasets.photo_path, dataset_id, name))


@router.post("/{dataset_id}/prepare", summary="Run `dataset prepare`: Kohya folder, config for the preset, repeats")
async def prepare(dataset_id: str, body: PrepareBody, state: Studio):
    choices = preset_choices(state.settings.studio)
    if body.preset not in choices:
        raise ApiError(422, f"preset {body.preset!r}: unknown; use one of {', '.join(choices)}")
    folder = await call_in_thread(state.datasets.folder, dataset_id)
    await call_in_thread(state.runs.refuse_while_training_on, folder / PREPARED)
    return await call_in_thread(
        state.datasets.prepare, dataset_id, preset=body.preset, preset_source=choices[body.preset], steps=body.steps
    )


@router.get("/{dataset_id}/check", summary="The `dataset check` report, with findings per photo")
async def check(dataset_id: str, state: Studio):
    return await call_in_thread(state.datasets.report, dataset_id)


@router.get(
    "/{dataset_id}/config",
    summary="The prepared Kohya training TOML (what a run starts from)",
    response_class=PlainTextResponse,
)
async def config(dataset_id: str, state: Studio):
    folder = await call_in_thread(state.datasets.prepared_dir, dataset_id)
    return PlainTextResponse((folder / DATASET_CONFIG_NAME).read_text(encoding="utf-8"), media_type="application/toml")


@router.post(
    "/{dataset_id}/config",
    summary="The TOML a run would train with: the prepared one (or `config_toml`) "
    "with steps, rank and learning rate written in",
    response_class=PlainTextResponse,
)
async def render_config(dataset_id: str, body: RenderBody, state: Studio):
    folder = await call_in_thread(state.datasets.prepared_dir, dataset_id)
    settings = TrainSettings(
        steps=body.steps, rank=body.rank, learning_rate=body.learning_rate, checkpoints=body.checkpoints
    )
    text = await call_in_thread(run_config_text, folder, body.config_toml, settings)
    return PlainTextResponse(text, media_type="application/toml")


@router.get("/{dataset_id}/captions", summary="Every training image with its caption")
async def captions(dataset_id: str, state: Studio):
    return await call_in_thread(state.datasets.captions, dataset_id)


@router.put("/{dataset_id}/captions/{image:path}", summary="Replace one image's caption")
async def set_caption(dataset_id: str, image: str, body: CaptionBody, state: Studio):
    return await call_in_thread(state.datasets.set_caption, dataset_id, image, body.caption)


@router.get("/{dataset_id}/images/{image:path}", summary="A prepared training image", response_class=FileResponse)
async def training_image(dataset_id: str, image: str, state: Studio):
    return FileResponse(await call_in_thread(state.datasets.training_image, dataset_id, image))


@router.post("/{dataset_id}/caption", summary="Caption every image with the server's captioner")
async def caption_all(dataset_id: str, body: CaptionAllBody, state: Studio):
    summary = await call_in_thread(state.datasets.caption_all, dataset_id, overwrite=body.overwrite)
    return {"summary": summary, "captions": await call_in_thread(state.datasets.captions, dataset_id)}
