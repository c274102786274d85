"""The training artifact a backend hands back: found, checked and fingerprinted before anything is published."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from lorapipe.atomic import atomic_write_text
from lorapipe.errors import EvaluationError, ModelLoadError, PipelineError
from lorapipe.file_names import TRAIN_SUMMARY_NAME
from lorapipe.hashes import sha256_file
from lorapipe.safetensors_header import read_header

SAMPLE_DIR = "sample"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class Artifact:
    """A verified training output: the LoRA, its summary, sample images and the run's other checkpoints
    (`NAME-000001`, `NAME-step00000500`), each with its sha256. `lora` is the file to publish: the final one,
    or the checkpoint the evaluate step recommended."""

    folder: Path
    lora: Path
    summary: Path | None
    samples: tuple[Path, ...]
    sha256: dict[str, str]  # path relative to folder -> hex digest
    run_loras: tuple[Path, ...] = ()  # every LoRA file of the run in training order, the final one last

    @property
    def checkpoints(self) -> tuple[Path, ...]:
        """The run's LoRA files other than the one to publish."""
        return tuple(p for p in self.run_loras if p != self.lora)

    @property
    def final_lora(self) -> Path:
        """The run's last file (`NAME.safetensors`), whose name the published LoRA keeps."""
        return self.run_loras[-1] if self.run_loras else self.lora

    @property
    def files(self) -> tuple[Path, ...]:
        return (*self.samples, *((self.summary,) if self.summary else ()), *self.checkpoints, self.lora)

    def relative(self, path: Path) -> str:
        return path.relative_to(self.folder).as_posix()

    def rewritten(self, path: Path) -> Artifact:
        """The same artifact after one of its LoRA files was rewritten in place (new metadata): that file checked and
        hashed again, the others kept as verified."""
        check_safetensors(path)
        return replace(self, sha256={**self.sha256, self.relative(path): sha256_file(path)})

    def publishing(self, lora: Path) -> Artifact:
        """The same artifact with `lora` (one of the run's LoRA files) as the file to publish."""
        if lora not in self.run_loras:
            raise PipelineError(f"{lora}: not a LoRA of the run in {self.folder}; pick one of its checkpoints")
        return replace(self, lora=lora)


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
    """Find the final LoRA (the file without a `-000001` / `-stepNNNNNNNN` suffix, which the summary's `lora_file`
    names too), the run's other checkpoints, the summary and the samples in a backend's output folder."""
    from lorapipe.evaluate.checkpoints import find_checkpoints

    folder = Path(folder)
    summary = folder / TRAIN_SUMMARY_NAME
    loras = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if not loras:
        raise PipelineError(f"{folder}: expected a .safetensors LoRA, found none; check the train step's log")
    for path in loras:
        check_safetensors(path)
    try:  # sd-scripts' names tell the final file from the checkpoints; one run's files only
        run = find_checkpoints(folder)
    except EvaluationError as exc:
        raise PipelineError(f"{exc} (train step output)") from exc
    run_loras = tuple(c.path for c in run.checkpoints)
    lora = _named_by_summary(folder, run_loras) or (run.final.path if run.final.kind == "final" else None)
    if lora is None:
        raise PipelineError(
            f"{folder}: only intermediate checkpoints ({', '.join(p.name for p in loras)}), no final "
            f"{run.output_name}.safetensors; the run stopped early, check the train step's log"
        )
    sample_dir = folder / SAMPLE_DIR
    samples = (
        tuple(sorted(p for p in sample_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        if sample_dir.is_dir()
        else ()
    )
    files = (*samples, *((summary,) if summary.is_file() else ()), *run_loras)
    digests = {p.relative_to(folder).as_posix(): sha256_file(p) for p in files}
    return Artifact(folder, lora, summary if summary.is_file() else None, samples, digests, run_loras)


def summary_lora_name(folder: Path) -> str | None:
    """The file name of the run's result as `train_summary.json` in `folder` records it (`lora_file`); None while
    training, without a summary, or when it is unreadable."""
    try:
        named = json.loads((Path(folder) / TRAIN_SUMMARY_NAME).read_text(encoding="utf-8")).get("lora_file")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(named).name if named else None


def _named_by_summary(folder: Path, loras: tuple[Path, ...]) -> Path | None:
    """The LoRA file `train_summary.json` names as the run's result, when it is one of `loras`."""
    named = summary_lora_name(folder)
    return next((p for p in loras if named and p.name == named), None)


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
