"""The studio's datasets: uploaded photos -> `dataset prepare` -> a Kohya dataset folder, its check and captions.

Each dataset lives in `<home>/studio/datasets/<id>/` (the id is the server's, 12 hex digits):

    meta.json     trigger, class, preset, what prepare did (kept / converted / skipped photos with reasons)
    photos/       the uploads under server-chosen names (photo-0001.jpg ...), with photos.json mapping labels
    dataset/      what `dataset prepare` wrote: kohya-sdxl-config.toml beside the <repeats>_<trigger> <class> folder

Routes name datasets, photos and images by the ids and names listed here, never by a path.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import BinaryIO

from lorapipe.atomic import atomic_write_text
from lorapipe.dataset.layout import is_image_name, parse_subset_folder_name
from lorapipe.errors import DatasetError
from lorapipe.file_names import DATASET_CONFIG_NAME
from lorapipe.server.studio_settings import StudioSettings
from lorapipe.server.studio_uploads import PhotoStager, StoredPhoto

DATASET_ID = re.compile(r"^[0-9a-f]{12}$")
TRIGGER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")
CLASS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\- ]{0,63}$")
META = "meta.json"
PHOTOS = "photos"
PHOTO_INDEX = "photos.json"
PREPARED = "dataset"
MAX_CAPTION_CHARS = 2000
EDITED_CONFIG_PREFIX = "studio-config-"


class DatasetNotFound(DatasetError):
    """No studio dataset, photo or image by that name."""


class StudioDatasets:
    """Create, fill, prepare and caption studio datasets; one lock serialises changes (uploads, prepare)."""

    def __init__(self, root: Path, settings: StudioSettings, *, base_model: str | None = None):
        self.root = root
        self.settings = settings
        self.base_model = base_model
        self._lock = threading.Lock()

    # -- lookup ---------------------------------------------------------------------------------------------------
    def folder(self, dataset_id: str) -> Path:
        if not DATASET_ID.match(dataset_id or ""):
            raise DatasetNotFound(f"dataset {dataset_id!r}: not a dataset id; see the dataset list")
        folder = self.root / dataset_id
        if not (folder / META).is_file():
            raise DatasetNotFound(f"dataset {dataset_id}: no such dataset")
        return folder

    def meta(self, dataset_id: str) -> dict:
        return json.loads((self.folder(dataset_id) / META).read_text(encoding="utf-8"))

    def _write_meta(self, dataset_id: str, meta: dict) -> None:
        atomic_write_text(self.folder(dataset_id) / META, json.dumps(meta, indent=2, sort_keys=True) + "\n")

    def list(self) -> list[dict]:
        if not self.root.is_dir():
            return []
        metas = [
            json.loads((f / META).read_text(encoding="utf-8"))
            for f in self.root.iterdir()
            if DATASET_ID.match(f.name) and (f / META).is_file()
        ]
        return sorted(metas, key=lambda m: m["created"], reverse=True)

    # -- creating and uploading ---------------------------------------------------------------------------------
    def create(self, *, trigger: str, class_name: str | None) -> dict:
        if not TRIGGER.match(trigger or ""):
            raise DatasetError(f"trigger {trigger!r}: use one word of letters, digits, '-' or '_' (e.g. dwjz)")
        if class_name and not CLASS_NAME.match(class_name):
            raise DatasetError(f"class_name {class_name!r}: use letters, digits, spaces, '-' or '_' (e.g. toy)")
        dataset_id = secrets.token_hex(6)
        folder = self.root / dataset_id
        (folder / PHOTOS).mkdir(parents=True)
        meta = {
            "id": dataset_id,
            "trigger": trigger,
            "class_name": class_name or None,
            "created": time.time(),
            "prepared": None,
        }
        atomic_write_text(folder / META, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        atomic_write_text(folder / PHOTO_INDEX, "[]\n")
        return meta

    def photos(self, dataset_id: str) -> list[dict]:
        return json.loads((self.folder(dataset_id) / PHOTO_INDEX).read_text(encoding="utf-8"))

    def add_photos(self, dataset_id: str, uploads: list[tuple[BinaryIO, str | None, bool]]) -> list[StoredPhoto]:
        """Store (file, client name, is_zip) uploads all or nothing; raises UploadRejected naming the file."""
        folder = self.folder(dataset_id)
        with self._lock:
            listed = self.photos(dataset_id)
            first = max((int(p["name"][6:10]) for p in listed), default=0) + 1
            stager = PhotoStager(folder / PHOTOS, first_index=first, existing=len(listed), settings=self.settings)
            try:
                for handle, client_name, is_zip in uploads:
                    if is_zip:
                        stager.add_zip(_spooled_path(handle, stager.staging), client_name)
                    else:
                        stager.add(handle, client_name)
            except BaseException:
                stager.discard()
                raise
            stored = stager.commit()
            listed += [p.to_json() for p in stored]
            atomic_write_text(folder / PHOTO_INDEX, json.dumps(listed, indent=2) + "\n")
            self._forget_prepared(dataset_id)
        return stored

    def remove_photo(self, dataset_id: str, name: str) -> None:
        folder = self.folder(dataset_id)
        with self._lock:
            listed = self.photos(dataset_id)
            kept = [p for p in listed if p["name"] != name]
            if len(kept) == len(listed):
                raise DatasetNotFound(f"photo {name!r}: not in dataset {dataset_id}")
            atomic_write_text(folder / PHOTO_INDEX, json.dumps(kept, indent=2) + "\n")
            (folder / PHOTOS / name).unlink(missing_ok=True)
            self._forget_prepared(dataset_id)

    def photo_path(self, dataset_id: str, name: str) -> Path:
        if name not in {p["name"] for p in self.photos(dataset_id)}:
            raise DatasetNotFound(f"photo {name!r}: not in dataset {dataset_id}")
        return self.folder(dataset_id) / PHOTOS / name

    def _forget_prepared(self, dataset_id: str) -> None:
        """New or removed photos make the prepared folder stale: prepare runs again before training (the folder
        stays until then, so its captions carry over)."""
        meta = self.meta(dataset_id)
        if meta.get("prepared"):
            meta["prepared"] = None
            self._write_meta(dataset_id, meta)

    # -- prepare and check --------------------------------------------------------------------------------------
    def prepare(self, dataset_id: str, *, preset: str, preset_source: str, steps: int | None = None) -> dict:
        """Run `dataset prepare` on the uploaded photos into `dataset/`, replacing an earlier one; captions already
        written for the same photos are kept (a new preset or step budget should not cost the captions)."""
        from lorapipe.dataset.prepare import prepare_dataset

        folder = self.folder(dataset_id)
        with self._lock:
            meta = self.meta(dataset_id)
            if not self.photos(dataset_id):
                raise DatasetError(f"dataset {dataset_id}: no photos yet; upload some first")
            kept_captions = self._existing_captions(dataset_id)
            target = folder / PREPARED
            staging = folder / ".prepare"
            shutil.rmtree(staging, ignore_errors=True)
            result = prepare_dataset(
                folder / PHOTOS,
                staging,
                trigger=meta["trigger"],
                class_name=meta["class_name"],
                preset=preset_source,
                steps=steps,
                base_model=self.base_model,
            )
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
            images, extension = _training_images(target)
            for name, image in images.items():
                if name.split("/", 1)[1] in kept_captions:
                    atomic_write_text(image.with_name(image.stem + extension), kept_captions[name.split("/", 1)[1]])
            meta["prepared"] = {
                "preset": preset,
                "steps": steps,
                "at": time.time(),
                "subset": result.subset_dir.name,
                "repeats": result.repeats,
                "epochs": result.epochs,
                "expected_steps": result.expected_steps,
                "kept": [{"photo": p.source.name, "image": p.target.name, "note": p.note} for p in result.kept],
                "skipped": [{"photo": p.source.name, "reason": p.reason} for p in result.skipped],
            }
            self._write_meta(dataset_id, meta)
        return meta

    def _existing_captions(self, dataset_id: str) -> dict[str, str]:
        """Image file name -> caption of the last prepared folder, stale or not (empty when there is none)."""
        from lorapipe.dataset.captions import read_caption

        folder = self.folder(dataset_id) / PREPARED
        if not (folder / DATASET_CONFIG_NAME).is_file():
            return {}
        images, extension = _training_images(folder)
        captions = {}
        for path in images.values():
            try:
                text = read_caption(path, extension).text
            except DatasetError:  # unreadable or empty: nothing to carry over
                continue
            if text:
                captions[path.name] = text
        return captions

    def prepared_dir(self, dataset_id: str) -> Path:
        """The prepared Kohya dataset folder; DatasetError when prepare has not run since the last upload."""
        meta = self.meta(dataset_id)
        folder = self.folder(dataset_id) / PREPARED
        if not meta.get("prepared") or not (folder / DATASET_CONFIG_NAME).is_file():
            raise DatasetError(f"dataset {dataset_id}: not prepared since the last change; prepare it first")
        return folder

    def save_config(self, dataset_id: str, text: str) -> tuple[Path, bool]:
        """Keep a TOML the page sent beside the prepared one, so its relative paths (sample_prompts) mean the same;
        content-addressed: the same text is the same file (and cache key). Returns (path, newly written)."""
        folder = self.prepared_dir(dataset_id)
        path = folder / f"{EDITED_CONFIG_PREFIX}{hashlib.sha256(text.encode()).hexdigest()[:16]}.toml"
        if path.is_file():
            return path, False
        atomic_write_text(path, text)
        return path, True

    def report(self, dataset_id: str) -> dict:
        """`dataset check` of the prepared folder, with every finding also attached to the photo it is about."""
        from lorapipe.dataset.check import check_dataset

        meta = self.meta(dataset_id)
        folder = self.prepared_dir(dataset_id)
        report = check_dataset(folder, count_tokens=False).to_dict()
        findings: dict[str, list[dict]] = {p["name"]: [] for p in self.photos(dataset_id)}
        by_stem = {Path(name).stem: name for name in findings}  # prepare keeps the stems of our photo-NNNN names
        general = []
        for dataset in report["datasets"]:
            for problem in dataset["problems"]:
                photo = by_stem.get(Path(str(problem["path"])).stem)
                finding = {"severity": problem["severity"], "reason": problem["reason"]}
                (findings[photo] if photo else general).append(finding)
        prepared = meta.get("prepared") or {}
        for entry in prepared.get("kept", ()):
            if entry["photo"] in findings and entry["note"] != "copied":
                findings[entry["photo"]].append({"severity": "info", "reason": entry["note"]})
        for entry in prepared.get("skipped", ()):
            if entry["photo"] in findings:
                findings[entry["photo"]].append({"severity": "error", "reason": f"left out: {entry['reason']}"})
        return {
            "ok": report["ok"],
            "errors": report["errors"],
            "warnings": report["warnings"],
            "photos": findings,
            "general": general,
            "prepared": prepared,
            "datasets": _without_root(report["datasets"], folder),
        }

    # -- captions -------------------------------------------------------------------------------------------------
    def _training_images(self, dataset_id: str) -> tuple[dict[str, Path], str]:
        return _training_images(self.prepared_dir(dataset_id))

    def captions(self, dataset_id: str) -> list[dict]:
        from lorapipe.dataset.captions import read_caption
        from lorapipe.dataset.prepare import reason_of

        images, extension = self._training_images(dataset_id)
        listed = []
        for name, path in images.items():
            try:
                caption = read_caption(path, extension).text
            except DatasetError as exc:
                caption, problem = None, reason_of(exc, path.with_name(path.stem + extension))
            else:
                problem = None
            listed.append({"image": name, "caption": caption, "problem": problem})
        return listed

    def training_image(self, dataset_id: str, name: str) -> Path:
        images, _ = self._training_images(dataset_id)
        if name not in images:
            raise DatasetNotFound(f"image {name!r}: not in dataset {dataset_id}")
        return images[name]

    def set_caption(self, dataset_id: str, name: str, text: str) -> dict:
        images, extension = self._training_images(dataset_id)
        if name not in images:
            raise DatasetNotFound(f"image {name!r}: not in dataset {dataset_id}")
        caption = " ".join(text.split())
        if not caption:
            raise DatasetError(f"caption of {name}: empty; write a caption (an empty file makes training fail)")
        if len(caption) > MAX_CAPTION_CHARS:
            raise DatasetError(f"caption of {name}: {len(caption)} characters; keep it under {MAX_CAPTION_CHARS}")
        path = images[name]
        atomic_write_text(path.with_name(path.stem + extension), caption + "\n")
        return {"image": name, "caption": caption, "problem": None}

    def caption_all(self, dataset_id: str, *, overwrite: bool) -> dict:
        """Run the configured captioner over the prepared images (writes caption files, nothing else)."""
        from lorapipe.dataset.caption import caption_dataset

        folder = self.prepared_dir(dataset_id)
        with self._lock:
            summary = caption_dataset(
                folder, captioner=self.settings.captioner, model=self.settings.captioner_model, overwrite=overwrite
            )
        return {
            "captioner": summary.captioner,
            "written": len(summary.written),
            "kept": len(summary.kept),
            "failed": [{"image": f.path.name, "reason": f.reason} for f in summary.failed],
        }


def _training_images(folder: Path) -> tuple[dict[str, Path], str]:
    """`<subset>/<image>` -> path in a prepared folder's subsets, and the caption extension its config reads."""
    from lorapipe.dataset.check import read_flat_config
    from lorapipe.dataset.options import SUBSET_DEFAULTS

    config = read_flat_config(folder / DATASET_CONFIG_NAME)
    extension = config.get("caption_extension") or SUBSET_DEFAULTS["caption_extension"]  # sd-scripts' default
    images: dict[str, Path] = {}
    for subset in sorted(p for p in folder.iterdir() if p.is_dir() and parse_subset_folder_name(p.name)):
        for image in sorted(subset.iterdir()):
            if image.is_file() and is_image_name(image.name):
                images[f"{subset.name}/{image.name}"] = image
    return images, extension


def _spooled_path(handle: BinaryIO, staging: Path) -> Path:
    """A zip needs random access: spool the upload into the staging folder first (size capped by the body limit)."""
    path = staging / f"upload-{secrets.token_hex(4)}.zip"
    with open(path, "xb") as sink:
        shutil.copyfileobj(handle, sink, 1024 * 1024)
    return path


def _without_root(value, root: Path):
    """The report with the server's own folder names cut off its paths (the client knows the dataset by id)."""
    text = json.dumps(value)
    prefix = json.dumps(str(root))[1:-1]
    return json.loads(text.replace(prefix + "/", "").replace(prefix, "."))
