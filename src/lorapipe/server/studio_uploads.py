"""Uploaded photos onto disk, safely: size and count caps, the dataset layer's image checks, server-chosen names.

A client's file name is only ever a label shown back to it (sanitised); the file on disk is `photo-NNNN.<ext>`
with the extension of the format the bytes really are. A zip is refused whole, before anything is extracted, when
any entry climbs out (`../`, absolute paths), is a link, or would unpack past the caps. Every upload lands in a
staging folder first and is moved in only when the whole request was good: a bad request writes nothing.
"""

from __future__ import annotations

import shutil
import stat
import unicodedata
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from lorapipe.dataset.images import ACCEPTED_FORMATS, probe_image
from lorapipe.dataset.prepare import reason_of
from lorapipe.errors import DatasetError
from lorapipe.server.studio_settings import StudioSettings

_CHUNK = 1024 * 1024
_LABEL_MAX = 120
# Files a zip of photos commonly carries besides them; skipped, not refused (captions are written by the studio).
_SKIPPED_SUFFIXES = (".txt", ".caption", ".json", ".toml", ".md", ".ds_store", ".ini")


class UploadRejected(DatasetError):
    """An upload the studio will not store; the message names the file and the reason."""


class UploadTooLarge(UploadRejected):
    """An upload past a size cap (HTTP 413)."""


@dataclass(frozen=True)
class StoredPhoto:
    name: str  # the file name on disk, chosen by the server
    label: str  # the client's name for it, sanitised, for display only
    width: int
    height: int
    format: str
    bytes: int

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "label": self.label,
            "width": self.width,
            "height": self.height,
            "format": self.format,
            "bytes": self.bytes,
        }


def sanitise_label(name: str | None, fallback: str = "photo") -> str:
    """The last path component of a client file name, printable characters only, at most 120 characters."""
    text = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(ch for ch in unicodedata.normalize("NFC", text) if ch.isprintable()).strip().lstrip(".")
    return text[:_LABEL_MAX] or fallback


def _copy_capped(source: BinaryIO, target: Path, limit: int, label: str) -> int:
    written = 0
    with open(target, "xb") as sink:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > limit:
                raise UploadTooLarge(f"{label}: larger than {limit} bytes; upload smaller photos")
            sink.write(chunk)
    if written == 0:
        raise UploadRejected(f"{label}: empty file; upload the photo again")
    return written


def _checked(path: Path, label: str, settings: StudioSettings) -> tuple[int, int, str]:
    """Probe with the dataset layer's checks (format by content, truncation, decompression bombs)."""
    try:
        header = probe_image(path)
    except DatasetError as exc:
        raise UploadRejected(f"{label}: {reason_of(exc, path)}") from None
    if header.format not in ACCEPTED_FORMATS:
        accepted = ", ".join(sorted(set(ACCEPTED_FORMATS)))
        raise UploadRejected(f"{label}: {header.format} images are not used for training; upload {accepted}")
    width, height = header.size
    if width * height > settings.max_photo_pixels:
        raise UploadRejected(f"{label}: {width}x{height} is over {settings.max_photo_pixels} pixels; resize it")
    return width, height, header.format


class PhotoStager:
    """Collects one request's photos in `staging/`; `commit()` moves them into `photos/`, `discard()` drops them."""

    def __init__(self, photos_dir: Path, *, first_index: int, existing: int, settings: StudioSettings):
        self.photos_dir = photos_dir
        self.staging = photos_dir.parent / f".staging-{first_index}-{id(self):x}"
        self.staging.mkdir(parents=True)
        self.next_index = first_index
        self.count = existing
        self.settings = settings
        self.stored: list[StoredPhoto] = []

    def add(self, source: BinaryIO, client_name: str | None, *, label: str | None = None) -> StoredPhoto:
        label = label or sanitise_label(client_name)
        if self.count >= self.settings.max_photos:
            raise UploadRejected(f"{label}: a dataset holds at most {self.settings.max_photos} photos")
        scratch = self.staging / f"upload-{self.next_index:04d}"
        size = _copy_capped(source, scratch, self.settings.max_photo_bytes, label)
        width, height, image_format = _checked(scratch, label, self.settings)
        name = f"photo-{self.next_index:04d}{ACCEPTED_FORMATS[image_format]}"
        scratch.rename(self.staging / name)
        photo = StoredPhoto(name, label, width, height, image_format, size)
        self.stored.append(photo)
        self.next_index += 1
        self.count += 1
        return photo

    def add_zip(self, archive: Path, client_name: str | None) -> list[StoredPhoto]:
        label = sanitise_label(client_name, "upload.zip")
        try:
            with zipfile.ZipFile(archive) as zipped:
                members = _safe_members(zipped.infolist(), label, self.settings)
                return [self._add_member(zipped, info, label) for info in members]
        except zipfile.BadZipFile:
            raise UploadRejected(f"{label}: not a readable zip file (truncated or another format)") from None

    def _add_member(self, zipped: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> StoredPhoto:
        with zipped.open(info) as member:
            try:
                return self.add(member, None, label=f"{label}:{sanitise_label(info.filename)}")
            except (zipfile.BadZipFile, EOFError, OSError) as exc:
                raise UploadRejected(f"{label}:{info.filename}: cannot be unpacked ({exc})") from None

    def commit(self) -> list[StoredPhoto]:
        self.photos_dir.mkdir(parents=True, exist_ok=True)
        for photo in self.stored:
            (self.staging / photo.name).rename(self.photos_dir / photo.name)
        self.discard()
        return self.stored

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def _safe_members(infos: Iterable[zipfile.ZipInfo], label: str, settings: StudioSettings) -> list[zipfile.ZipInfo]:
    """The photo entries of a zip, after refusing it whole for any unsafe entry or a total past the caps."""
    photos = []
    total = 0
    for count, info in enumerate(infos, start=1):
        name = info.filename
        where = f"{label}:{name}"
        if count > settings.max_zip_entries:
            raise UploadRejected(f"{label}: more than {settings.max_zip_entries} entries; zip fewer files")
        path = PurePosixPath(name.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
            raise UploadRejected(f"{where}: entry points outside the archive; the zip is refused")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UploadRejected(f"{where}: symbolic link; the zip is refused (zip the photos themselves)")
        if (
            info.is_dir()
            or path.name.startswith(".")
            or "__MACOSX" in path.parts
            or path.suffix.lower() in _SKIPPED_SUFFIXES
        ):
            continue
        total += info.file_size
        if info.file_size > settings.max_photo_bytes or total > settings.max_zip_bytes:
            raise UploadTooLarge(
                f"{where}: unpacks past the upload caps ({settings.max_photo_bytes} bytes a photo, "
                f"{settings.max_zip_bytes} a zip); zip fewer or smaller photos"
            )
        photos.append(info)
    if not photos:
        raise UploadRejected(f"{label}: holds no photos")
    return photos
