"""The SageMaker hosting contract's model folder: what ``model.tar.gz`` holds and how ``/opt/ml/model`` is read.

SageMaker unpacks an endpoint's ``ModelDataUrl`` (a ``model.tar.gz``) into ``/opt/ml/model`` before it starts the
container with ``serve``. lorapipe's archive holds LoRA files under ``loras/`` and a small manifest,
``lorapipe-model.json``::

    {"format": "lorapipe-model/1",
     "base_model": "stabilityai/stable-diffusion-xl-base-1.0",   # hub id, path in the image, s3:// URL, or a
                                                                  # folder/file inside the archive ("base/")
     "loras": {"toy": {"file": "loras/toy.safetensors", "sha256": "..."}},
     "lora_prefix": "s3://bucket/loras/"}                         # optional: more LoRAs fetched at request time

A model without data (no archive) is configured by the environment instead: ``LORAPIPE_BASE_MODEL`` and
``LORAPIPE_LORA_PREFIX``. The builder and the reader live here, upstream of the pipeline (which builds archives at
publish time), ``lorapipe.deploy`` (which rebuilds them for an update) and the server (which reads them), so the
format has one home. No torch: the standard library, the store's sha256 and the registry's name rule.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lorapipe.atomic import atomic_target
from lorapipe.errors import GenerationError, ModelLoadError
from lorapipe.hashes import sha256_file
from lorapipe.registry import LORA_SUFFIX, check_lora_name

MANIFEST_NAME = "lorapipe-model.json"
FORMAT = "lorapipe-model/1"
LORA_FOLDER = "loras"
BASE_MODEL_ENV = "LORAPIPE_BASE_MODEL"
LORA_PREFIX_ENV = "LORAPIPE_LORA_PREFIX"
SERVING_PORT = 8080  # SageMaker sends /ping and /invocations to this port


@dataclass(frozen=True)
class HostedModel:
    """What one endpoint serves: the base model's location, bundled LoRA files (name -> path), an S3 prefix."""

    base_model: str
    loras: Mapping[str, Path] = field(default_factory=dict)
    lora_prefix: str | None = None
    source: str = ""  # where this came from, for log lines


def read_hosted_model(model_dir: Path, environ: Mapping[str, str] = os.environ) -> HostedModel:
    """The model folder's manifest (bundled LoRAs checked against their sha256), else the environment.

    Raises ModelLoadError naming the missing or malformed piece; the hosting server logs it and answers /ping 503.
    """
    manifest_path = model_dir / MANIFEST_NAME
    env_prefix = environ.get(LORA_PREFIX_ENV) or None
    if not manifest_path.is_file():
        base = environ.get(BASE_MODEL_ENV)
        if base:
            return HostedModel(
                base_model=base,
                lora_prefix=_prefix(env_prefix, LORA_PREFIX_ENV),
                source=f"${BASE_MODEL_ENV}",
            )
        raise ModelLoadError(
            f"{manifest_path}: missing, and ${BASE_MODEL_ENV} is not set; deploy a model.tar.gz "
            "built by `lorapipe deploy package` or set the model's environment"
        )
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"{manifest_path}: not readable JSON ({exc}); rebuild it with `lorapipe deploy package`"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelLoadError(f"{manifest_path}: format is not {FORMAT!r}; rebuild it with `lorapipe deploy package`")
    base = data.get("base_model")
    if not isinstance(base, str) or not base.strip():
        raise ModelLoadError(f"{manifest_path}: key 'base_model' missing or empty; name the base model's location")
    loras = _bundled_loras(model_dir, manifest_path, data.get("loras") or {})
    prefix = env_prefix or data.get("lora_prefix") or None  # the environment wins: an update may move the prefix
    return HostedModel(
        base_model=_resolve_base(model_dir, base),
        loras=loras,
        lora_prefix=_prefix(prefix, "lora_prefix"),
        source=str(manifest_path),
    )


def _resolve_base(model_dir: Path, base: str) -> str:
    """A relative location that exists inside the archive means the bundled copy; anything else is kept."""
    if "://" in base or Path(base).is_absolute():
        return base
    inside = model_dir / base
    return str(inside) if inside.exists() else base


def _bundled_loras(model_dir: Path, manifest_path: Path, entries) -> dict[str, Path]:
    if not isinstance(entries, dict):
        raise ModelLoadError(f"{manifest_path}: key 'loras' must map names to {{file, sha256}}")
    root = model_dir.resolve()
    loras: dict[str, Path] = {}
    for name, entry in entries.items():
        where = f"{manifest_path}: loras.{name}"
        try:
            check_lora_name(str(name))
        except GenerationError as exc:
            raise ModelLoadError(f"{where}: {exc}") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise ModelLoadError(f'{where}: expected {{"file": ..., "sha256": ...}}')
        path = (model_dir / entry["file"]).resolve()
        if root not in path.parents:
            raise ModelLoadError(f"{where}: file {entry['file']!r} is outside the model folder")
        if not path.is_file():
            raise ModelLoadError(f"{where}: file {entry['file']} is missing from the model archive")
        expected = entry.get("sha256")
        if expected and sha256_file(path) != expected:
            raise ModelLoadError(f"{where}: {entry['file']} does not match its sha256; rebuild the archive")
        loras[str(name)] = path
    return loras


def _prefix(url: str | None, key: str) -> str | None:
    if not url:
        return None
    if not url.startswith("s3://") or len(url.rstrip("/")) <= len("s3://"):
        raise ModelLoadError(f"{key} {url!r}: not an s3:// prefix; give s3://BUCKET/PREFIX/")
    return url if url.endswith("/") else url + "/"


def manifest_for(base_model: str, loras: Mapping[str, Path], lora_prefix: str | None = None) -> dict:
    """The manifest of an archive holding `loras` (name -> local file) under loras/<name>.safetensors."""
    if not base_model:
        raise ModelLoadError("--base-model: the hosted model needs a base model location (hub id, path or s3://)")
    return {
        "format": FORMAT,
        "base_model": base_model,
        "loras": {
            name: {
                "file": f"{LORA_FOLDER}/{name}{LORA_SUFFIX}",
                "sha256": sha256_file(Path(path)),
            }
            for name, path in sorted(loras.items())
        },
        "lora_prefix": _prefix(lora_prefix, "--lora-prefix"),
    }


def build_model_archive(
    target: Path,
    base_model: str,
    loras: Mapping[str, Path],
    lora_prefix: str | None = None,
) -> dict:
    """Write ``model.tar.gz`` (manifest + LoRA files) atomically at `target`; return its manifest."""
    for name, path in loras.items():
        if not Path(path).is_file():
            raise ModelLoadError(f"{path}: LoRA file for {name!r} does not exist")
        try:
            check_lora_name(name)
        except GenerationError as exc:
            raise ModelLoadError(str(exc)) from None
    manifest = manifest_for(base_model, loras, lora_prefix)
    payload = json.dumps(manifest, indent=2, sort_keys=True).encode()
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(target) as scratch, tarfile.open(scratch, "w:gz") as tar:
        info = tarfile.TarInfo(MANIFEST_NAME)
        info.size = len(payload)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(payload))
        for name, entry in manifest["loras"].items():
            tar.add(str(loras[name]), arcname=entry["file"], recursive=False)
    return manifest


def unpack_model_archive(archive: Path, folder: Path) -> HostedModel:
    """Unpack an archive the way SageMaker does (safely: no absolute paths or links out) and read it."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(folder, filter="data")
    except (OSError, tarfile.TarError) as exc:
        raise ModelLoadError(f"{archive}: not a readable model.tar.gz ({exc})") from exc
    return read_hosted_model(folder, environ={})
