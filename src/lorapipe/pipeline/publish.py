"""The publish step: the verified artifact to the output location, then the LoRA into the server's LoRA folder.

Order is what keeps a failure from half-publishing: samples and summary first, the LoRA next, the ``publish.json``
manifest last (readers trust a run's output prefix only once its manifest is there), and the LoRA folder the
server reads is touched only after every upload succeeded. A failed upload removes what this run had uploaded.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from lorapipe.atomic import atomic_copy
from lorapipe.errors import GenerationError, LorapipeError, StoreError
from lorapipe.hashes import sha256_file
from lorapipe.pipeline.artifact import Artifact, write_sha256_sidecars
from lorapipe.pipeline.runlog import RunLog
from lorapipe.registry import LoraRegistry, check_lora_name

MANIFEST_NAME = "publish.json"


def publish_artifact(
    artifact: Artifact,
    *,
    run_id: str,
    output_url: str | None,
    lora_dir: Path,
    lora_name: str,
    endpoint_url: str | None,
    log: RunLog,
    evaluation: dict | None = None,
) -> dict:
    """Publish and return the manifest (what went where, with sha256s, and the evaluate step's measures)."""
    check_publish_name(lora_name)
    write_sha256_sidecars(artifact)
    manifest: dict = {
        "run_id": run_id,
        "lora": artifact.lora.name,
        "sha256": artifact.sha256,
        "lora_path": str(lora_dir / f"{lora_name}.safetensors"),
        "output_prefix": None,
        "uploaded": [],
    }
    if evaluation is not None:
        manifest["evaluation"] = evaluation
    if output_url:
        manifest["output_prefix"], manifest["uploaded"] = _upload(
            artifact, run_id, output_url, endpoint_url, manifest, log
        )
    manifest["registry"] = install_lora(
        artifact.lora, artifact.sha256[artifact.relative(artifact.lora)], lora_dir=lora_dir, lora_name=lora_name
    )
    log.info(f"publish: LoRA available to the server as <lora:{lora_name}:1> ({manifest['lora_path']})")
    return manifest


def install_lora(source: Path, sha256: str, *, lora_dir: Path, lora_name: str) -> dict:
    """Copy one LoRA file into the folder the server reads as `<lora_name>.safetensors` (atomically), check the
    copy's sha256 and that the folder's catalogue lists it; return its catalogue entry (name, hashes)."""
    check_publish_name(lora_name)
    target = lora_dir / f"{lora_name}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_copy(source, target)
    if sha256_file(target) != sha256:
        target.unlink()
        raise StoreError(f"{target}: copy does not match the trained LoRA's sha256; check the disk and run again")
    entry = LoraRegistry(lora_dir).resolve(lora_name)
    if entry is None or entry.path.resolve() != target.resolve():
        problems = "; ".join(LoraRegistry(lora_dir).problems) or "not listed"
        raise StoreError(f"{target}: the LoRA folder's catalogue does not list it ({problems}); check the file")
    return {
        "name": entry.name,
        "path": str(target),
        "short_hash": entry.short_hash,
        "sha256_tensors": entry.sha256_tensors,
    }


def publish_checkpoint(checkpoint: Path, *, lora_dir: Path, lora_name: str) -> dict:
    """Publish one of a run's LoRA files (a step or epoch checkpoint, or the final file) into the LoRA folder,
    after checking its header; the run's own publish step is not repeated (no upload)."""
    from lorapipe.pipeline.artifact import check_safetensors

    check_safetensors(checkpoint)
    return install_lora(checkpoint, sha256_file(checkpoint), lora_dir=lora_dir, lora_name=lora_name)


def check_publish_name(name: str) -> None:
    """The registry's own rule (names are file stems, never paths), reported as a publish error."""
    try:
        check_lora_name(name)
    except GenerationError as exc:
        raise StoreError(f"--lora-name {name!r}: not a plain file stem; use letters, digits, '-', '_' or '.'") from exc
    if name.startswith("."):
        raise StoreError(f"--lora-name {name!r}: a hidden file would not be listed; drop the leading '.'")


def _upload(
    artifact: Artifact, run_id: str, output_url: str, endpoint_url: str | None, manifest: dict, log: RunLog
) -> tuple[str, list[str]]:
    from lorapipe.store import open_store

    prefix = f"{run_id}"
    uploaded: list[str] = []
    try:
        if "://" not in output_url or output_url.startswith("file://"):
            Path(output_url.removeprefix("file://")).expanduser().mkdir(parents=True, exist_ok=True)
        store = open_store(output_url, endpoint_url=endpoint_url)
        for path in artifact.files:  # LoRA is last in `files`
            key = f"{prefix}/{artifact.relative(path)}"
            store.upload_file(path, key)
            uploaded.append(key)
        with tempfile.TemporaryDirectory() as scratch:
            manifest_file = Path(scratch) / MANIFEST_NAME
            manifest_file.write_text(json.dumps({**manifest, "uploaded": uploaded}, indent=2, sort_keys=True))
            store.upload_file(manifest_file, f"{prefix}/{MANIFEST_NAME}")
    except Exception as exc:
        _remove_uploaded(output_url, endpoint_url, uploaded, log)
        if isinstance(exc, LorapipeError):
            raise
        raise StoreError(
            f"{output_url}: upload failed ({type(exc).__name__}: {exc}); "
            "check the URL, --s3-endpoint-url and credentials"
        ) from exc
    destination = f"{output_url.rstrip('/')}/{prefix}/"
    log.info(f"publish: {len(uploaded)} files and {MANIFEST_NAME} to {destination}")
    return destination, uploaded


def _remove_uploaded(output_url: str, endpoint_url: str | None, keys: list[str], log: RunLog) -> None:
    """Best effort: take back what this run uploaded so the prefix does not hold a partial LoRA set."""
    if not keys:
        return
    try:
        import fsspec

        from lorapipe.store import open_store

        store = open_store(output_url, endpoint_url=endpoint_url)
        options = {"client_kwargs": {"endpoint_url": endpoint_url}} if endpoint_url and not store.is_local else {}
        fs, _ = fsspec.core.url_to_fs(store.url_of(), **options)
        for key in keys:
            for name in (key, key + ".sha256"):
                url = store.url_of(name)
                if fs.exists(url):
                    fs.rm_file(url)
    except Exception as exc:  # the upload error is what the user needs to see; this one only goes to the log
        log.info(f"publish: could not remove partial upload ({type(exc).__name__}: {exc})")
