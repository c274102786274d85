"""Stage a local dataset in S3 for the sagemaker backend, at a content-addressed prefix under --output.

``<output>/datasets/<name>-<hash12>/`` holds exactly the files that make up the dataset's content hash, each
uploaded atomically by the store with its ``.sha256`` sidecar. Because the prefix names the content, an unchanged
dataset is found already there and a changed one goes to a new prefix: no file a running job may be reading is
ever overwritten. A manifest written beside the prefix (outside the channel, so SageMaker never downloads it) after
the last file marks the upload complete; an upload cut short resumes, skipping the files whose sidecar matches.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lorapipe.errors import LorapipeError, PipelineError, StoreError
from lorapipe.pipeline.hashing import ContentHasher, content_files
from lorapipe.pipeline.runlog import RunLog

UPLOADS_FOLDER = "datasets"
MANIFEST_SUFFIX = ".uploaded.json"
SIDECAR_SUFFIX = ".sha256"  # what the store writes beside every uploaded object
_PROGRESS_EVERY_S = 2.0


@dataclass(frozen=True)
class UploadResult:
    url: str  # the channel prefix, ending in "/"
    uploaded: int
    unchanged: int


def upload_name(dataset_dir: Path, content_hash: str) -> str:
    """``0001-dataset`` + content hash -> ``0001-dataset-<12 hex>`` (S3-safe characters only)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", Path(dataset_dir).name).strip(".-") or "dataset"
    return f"{stem}-{content_hash[:12]}"


def upload_dataset(
    dataset_dir: Path,
    *,
    output_url: str,
    hasher: ContentHasher,
    endpoint_url: str | None,
    log: RunLog,
    should_stop: Callable[[], bool] = lambda: False,
) -> UploadResult:
    """Upload `dataset_dir` under `output_url` (an s3:// prefix) unless that content is already there."""
    from lorapipe.store import open_store

    dataset_dir = Path(dataset_dir)
    files = content_files(dataset_dir)
    if not files:
        raise PipelineError(f"{dataset_dir}: no files to upload; give the NNNN-dataset folder")
    digests = {path.relative_to(dataset_dir).as_posix(): hasher.file(path) for path in files}
    prefix = f"{UPLOADS_FOLDER}/{upload_name(dataset_dir, hasher.folder(dataset_dir))}"
    manifest_rel = prefix + MANIFEST_SUFFIX
    try:
        store = open_store(output_url, endpoint_url=endpoint_url)
        url = store.url_of(prefix) + "/"
        if _manifest(store, manifest_rel) == digests:
            log.info(f"upload: dataset unchanged, already at {url}; nothing to upload")
            return UploadResult(url, 0, len(files))
        resuming = store.exists(prefix)  # an earlier upload of this content was cut short
        total_bytes = sum(path.stat().st_size for path in files)
        log.info(f"upload: {len(files)} files, {_mb(total_bytes)} -> {url}")
        uploaded = unchanged = sent_bytes = 0
        last_report = time.monotonic()
        for index, path in enumerate(files, start=1):
            if should_stop():
                raise PipelineError(f"upload: cancelled after {index - 1} of {len(files)} files")
            rel = path.relative_to(dataset_dir).as_posix()
            dest = f"{prefix}/{rel}"
            if resuming and _sidecar_digest(store, dest) == digests[rel]:
                unchanged += 1
            else:
                store.upload_file(path, dest)
                uploaded += 1
            sent_bytes += path.stat().st_size
            if time.monotonic() - last_report >= _PROGRESS_EVERY_S or index == len(files):
                log.info(f"upload: {index}/{len(files)} files, {_mb(sent_bytes)} of {_mb(total_bytes)}")
                last_report = time.monotonic()
        _write_manifest(store, manifest_rel, digests)
    except LorapipeError:
        raise
    except Exception as exc:  # s3fs/botocore raise their own types: name the destination and what to check
        raise StoreError(
            f"{output_url}: cannot upload the dataset ({type(exc).__name__}: {exc}); "
            "check --output, --s3-endpoint and credentials"
        ) from exc
    log.info(f"upload: done, {uploaded} uploaded, {unchanged} already there; dataset at {url}")
    return UploadResult(url, uploaded, unchanged)


def _manifest(store, rel: str) -> dict[str, str] | None:
    if not store.exists(rel):
        return None
    try:
        data = json.loads(store.read_bytes(rel))
    except ValueError:  # a damaged manifest only means uploading (checking) again
        return None
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else None


def _sidecar_digest(store, dest: str) -> str | None:
    """The sha256 in the sidecar of an object that is there (the store writes the sidecar after the object)."""
    sidecar = dest + SIDECAR_SUFFIX
    if not (store.exists(sidecar) and store.exists(dest)):
        return None
    words = store.read_bytes(sidecar).decode("utf-8", "replace").split()
    return words[0].lower() if words else None


def _write_manifest(store, rel: str, digests: dict[str, str]) -> None:
    """The store uploads files, so the manifest goes through a temporary local file (atomic like the rest)."""
    with tempfile.TemporaryDirectory(prefix="lorapipe-upload-") as folder:
        local = Path(folder) / Path(rel).name
        local.write_text(json.dumps({"files": digests}, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        store.upload_file(local, rel)


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
