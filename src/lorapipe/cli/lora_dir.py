"""The LoRA folder `generate` and `serve` read when `--lora-dir` is not given."""

from __future__ import annotations

from pathlib import Path


def resolve_lora_dir(given: str | None) -> Path:
    """The given folder, else the pipeline's publish folder (created, so a fresh install serves an empty list)."""
    if given:
        return Path(given)
    # Imported here so that `lorapipe --help` and the command modules stay light.
    from lorapipe.pipeline.request import PipelineHome

    folder = PipelineHome.resolve().default_lora_dir
    folder.mkdir(parents=True, exist_ok=True)
    return folder
