"""The training artifact a backend hands back: found, checked and fingerprinted before anything is published."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from lorapipe.atomic import atomic_write_text
from lorapipe.errors import ModelLoadError, PipelineError
from lorapipe.file_names import TRAIN_SUMMARY_NAME
from lorapipe.hashes import sha256_file
from lorapipe.safetensors_header import read_header

SAMPLE_DIR = "sample"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class Artifact:
    """A verified training output: the LoRA, its summary and sample images, each with its sha256."""

    folder: Path
    lora: Path
    summary: Path | None
    samples: tuple[Path, ...]
    sha256: dict[str, str]  # path relative to folder -> hex digest

    @property
    def files(self) -> tuple[Path, ...]:
        return (*self.samples, *((self.summary,) if self.summary else ()), self.lora)

    def relative(self, path: Path) -> str:
        return path.relative_to(self.folder).as_posix()


def check_safetensors(path: Path) -> dict:
    """Read and check the header of a safetensors file without torch; return its metadata.

    Catches the truncated-file case (``MetadataIncompleteBuffer`` in loaders) before a broken LoRA is published.
    """
    try:
        header = read_header(path, remedy="check the train step's log (was the trainer stopped while writing it?)")
    except ModelLoadError as exc:
        raise PipelineError(str(exc)) from exc
    if max((entry.offsets[1] for entry in header.tensors.values()), default=0) == 0:
        raise PipelineError(f"{path}: holds no tensors; training produced an empty LoRA")
    return dict(header.metadata)


def find_artifact(folder: Path) -> Artifact:
    """Find the final LoRA (the top-level ``.safetensors``, or the one the summary names beside step/epoch files),
    the summary and the samples in a backend's output folder."""
    folder = Path(folder)
    summary = folder / TRAIN_SUMMARY_NAME
    lora = _final_lora(folder, summary)
    check_safetensors(lora)
    sample_dir = folder / SAMPLE_DIR
    samples = tuple(sorted(p for p in sample_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)) \
        if sample_dir.is_dir() else ()
    files = (*samples, *((summary,) if summary.is_file() else ()), lora)
    digests = {p.relative_to(folder).as_posix(): sha256_file(p) for p in files}
    return Artifact(folder, lora, summary if summary.is_file() else None, samples, digests)


def _final_lora(folder: Path, summary: Path) -> Path:
    """The run's final LoRA: the only top-level file, or (beside step/epoch files) the one the summary names."""
    loras = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if len(loras) > 1 and summary.is_file():
        try:
            named = json.loads(summary.read_text(encoding="utf-8")).get("lora_file")
        except (OSError, ValueError):
            named = None
        chosen = [p for p in loras if named and p.name == Path(named).name]
        if chosen:
            return chosen[0]
    if len(loras) != 1:
        found = ", ".join(p.name for p in loras) or "none"
        raise PipelineError(f"{folder}: expected one .safetensors LoRA, found {found}; check the train step's log")
    return loras[0]


def write_sha256_sidecars(artifact: Artifact) -> None:
    """``<file>.sha256`` next to each file in the ``sha256sum`` format, so users can check copies by hand."""
    for relative, digest in artifact.sha256.items():
        path = artifact.folder / relative
        atomic_write_text(path.with_name(path.name + ".sha256"), f"{digest}  {path.name}\n")


def copy_artifact(source: Artifact, destination: Path) -> Artifact:
    """Copy a cached artifact into a new run folder (hard links when possible) and re-verify it there."""
    destination.mkdir(parents=True, exist_ok=True)
    for path in source.files:
        target = destination / source.relative(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.unlink()
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
    copied = find_artifact(destination)
    if copied.sha256 != source.sha256:
        raise PipelineError(f"{destination}: cached artifact changed while copying; run again with --no-cache")
    return copied
