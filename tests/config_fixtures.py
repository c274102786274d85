"""Helpers for the config tests: our fixture configs and a writable copy of a dataset folder."""

from __future__ import annotations

from pathlib import Path

CONFIGS = Path(__file__).parent / "data" / "configs"
RECIPE = CONFIGS / "recipe-kohya-sdxl-config.toml"
FLAT = CONFIGS / "flat-kohya-sdxl-config.toml"
SECTIONED = CONFIGS / "sectioned-kohya-sdxl-config.toml"
# The tests assume they are not inside a SageMaker container, where /opt/ml paths would exist.
OUTSIDE_SAGEMAKER = not Path("/opt/ml").exists()


def write_config(folder: Path, text: str, name: str = "kohya-sdxl-config.toml") -> Path:
    """Write a training TOML into `folder` (a dataset folder copy) and return its path."""
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def minimal_config(**keys: object) -> str:
    """A small valid flat config; `keys` add or replace lines (values written as TOML literals via repr-ish)."""
    base: dict[str, object] = {
        "pretrained_model_name_or_path": "stabilityai/stable-diffusion-xl-base-1.0",
        "resolution": "64,64",
        "caption_extension": ".txt",
        "enable_bucket": True,
        "min_bucket_reso": 32,
        "max_bucket_reso": 128,
        "bucket_reso_steps": 32,
    }
    base.update(keys)
    return "".join(f"{key} = {toml_literal(value)}\n" for key, value in base.items() if value is not None)


def toml_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    return repr(value)
