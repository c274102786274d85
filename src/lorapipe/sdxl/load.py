"""Load an SDXL base model from a diffusers folder, a hub id, a single-file SGM checkpoint, or `random:<preset>`.

`resolve_base_model` decides what a `--base-model` value is without importing torch (so bad input fails in
milliseconds with a one-line message); `load_sdxl_pipeline` then loads it with diffusers. Single-file configs are
resolved locally: from the file's own metadata when lorapipe wrote it, else from SDXL 1.0 base's configs that
ship in `presets` — never from the network. `random:full` / `random:tiny` build the architecture with seeded random
weights in memory (benchmarks and dry runs: real shapes, no multi-GB file written and read back).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorapipe.errors import ModelLoadError
from lorapipe.file_names import user_cache_dir
from lorapipe.safetensors_header import read_header
from lorapipe.sdxl.constants import SDXL_HUB_ID, SGM_SDXL_MARKERS

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_LOCAL_FORMS = "a diffusers SDXL folder (with model_index.json) or a single-file SDXL .safetensors checkpoint"
_WHAT_TO_PASS = f"pass {_LOCAL_FORMS}, or a hub id such as {SDXL_HUB_ID} when online"
_SDXL_PIPELINES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")
RANDOM_PREFIX = "random:"  # random:<preset>: the architecture with seeded random weights, built in memory


@dataclass(frozen=True)
class BaseModelSource:
    """What a --base-model value points at: kind is 'diffusers', 'single_file', 'hub' or 'random' (location = the
    preset)."""

    kind: str
    location: str
    configs: dict[str, Any] | None = None  # single file: diffusers configs stored in its metadata

    @property
    def name(self) -> str:
        """Display name as A1111 and Kohya metadata show it (file or folder stem, or the hub id)."""
        if self.kind == "random":
            return f"{RANDOM_PREFIX}{self.location}"
        return self.location if self.kind == "hub" else Path(self.location).name


def resolve_base_model(spec: str) -> BaseModelSource:
    """Classify and validate a --base-model value; raise ModelLoadError naming it when it is not SDXL."""
    if spec.startswith(RANDOM_PREFIX):
        from lorapipe.sdxl.presets import PRESETS

        preset = spec.removeprefix(RANDOM_PREFIX)
        if preset not in PRESETS:
            raise ModelLoadError(
                f"{spec}: unknown preset {preset!r}; use " + " or ".join(RANDOM_PREFIX + p for p in PRESETS)
            )
        return BaseModelSource("random", preset)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _resolve_folder(path)
    if path.is_file():
        return _resolve_file(path)
    if _HUB_ID.match(spec) and not spec.startswith((".", "/")):
        if _offline():
            raise ModelLoadError(
                f"{spec}: looks like a hub id, but hub access is off (HF_HUB_OFFLINE); pass {_LOCAL_FORMS}"
            )
        return BaseModelSource("hub", spec)
    raise ModelLoadError(f"{spec}: no such file or folder; {_WHAT_TO_PASS}")


def _resolve_folder(path: Path) -> BaseModelSource:
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ModelLoadError(
            f"{path}: folder has no model_index.json, so it is not a diffusers pipeline; {_WHAT_TO_PASS}"
        )
    try:
        index = json.loads(index_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{index_file}: unreadable ({exc}); {_WHAT_TO_PASS}") from None
    if index.get("_class_name") not in _SDXL_PIPELINES or "text_encoder_2" not in index:
        raise ModelLoadError(f"{path}: is a {index.get('_class_name', 'unknown')} folder, not SDXL; {_WHAT_TO_PASS}")
    return BaseModelSource("diffusers", str(path))


def _resolve_file(path: Path) -> BaseModelSource:
    if path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
        raise ModelLoadError(
            f"{path}: pickle checkpoints are not loaded (they can run code); "
            "convert it to .safetensors or pass a diffusers folder"
        )
    header = read_header(path, remedy=_WHAT_TO_PASS)
    metadata = header.metadata
    if not all(marker in header.tensors for marker in SGM_SDXL_MARKERS):
        raise ModelLoadError(
            f"{path}: not an SDXL base checkpoint (no SDXL UNet and second text encoder keys); {_WHAT_TO_PASS}"
        )
    from lorapipe.sdxl.single_file import CONFIG_METADATA_KEY

    configs = json.loads(metadata[CONFIG_METADATA_KEY]) if CONFIG_METADATA_KEY in metadata else None
    return BaseModelSource("single_file", str(path), configs)


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def load_sdxl_pipeline(
    spec: str, *, dtype: str | None = None, pipeline_class=None, random_device=None, random_dtype=None
):
    """Load a diffusers SDXL pipeline (StableDiffusionXLPipeline unless `pipeline_class` is given).

    Files load to the CPU (in `dtype`, else their own). `random:<preset>` weights are built directly on
    `random_device` (default CPU) in `dtype`, else the torch dtype `random_dtype`, else fp32.
    """
    from diffusers import StableDiffusionXLPipeline

    from lorapipe.sdxl.factory import torch_dtype

    source = resolve_base_model(spec)
    cls = pipeline_class or StableDiffusionXLPipeline
    if source.kind == "random":
        return _random_pipeline(
            cls, source.location, device=random_device, dtype=torch_dtype(dtype) if dtype else random_dtype
        )
    return _load_files(cls, source, spec, {"dtype": torch_dtype(dtype)} if dtype else {})


def _random_pipeline(cls, preset: str, *, device, dtype):
    """The preset's architecture with seeded random weights (seed 0, as `lorapipe model make-tiny`) built on
    `device` in `dtype`, with the real tokenizers and SDXL's scheduler."""
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTokenizer

    from lorapipe.sdxl.factory import build_models, dtype_name
    from lorapipe.sdxl.presets import SCHEDULER_CONFIG

    models = build_models(preset, seed=0, device=str(device or "cpu"), dtype=dtype_name(dtype))
    tokenizers = materialize_config_folder(None)  # SDXL's config folder, cached once, holds both tokenizers
    scheduler = EulerDiscreteScheduler.from_config({k: v for k, v in SCHEDULER_CONFIG.items() if k[0] != "_"})
    return cls(
        **models,
        tokenizer=CLIPTokenizer.from_pretrained(tokenizers / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(tokenizers / "tokenizer_2"),
        scheduler=scheduler,
    )


def _load_files(cls, source: BaseModelSource, spec: str, kwargs: dict):
    try:
        if source.kind == "single_file":
            config_dir = materialize_config_folder(source.configs)
            return cls.from_single_file(source.location, config=str(config_dir), local_files_only=True, **kwargs)
        return cls.from_pretrained(source.location, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{spec}: could not be loaded as SDXL ({first_line}); {_WHAT_TO_PASS}") from None


def materialize_config_folder(configs: dict[str, Any] | None) -> Path:
    """A local diffusers config folder (no weights) for a single-file checkpoint, cached by content."""
    from lorapipe.sdxl.presets import SCHEDULER_CONFIG, text_encoder_configs, unet_config, vae_config
    from lorapipe.sdxl.tokenizers import write_sdxl_tokenizers

    if configs is None:
        te1, te2 = text_encoder_configs("full")
        configs = {"unet": unet_config("full"), "vae": vae_config("full"), "text_encoder": te1, "text_encoder_2": te2}
    key = hashlib.sha256(json.dumps(configs, sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = user_cache_dir() / "sdxl-configs" / key
    if (folder / "model_index.json").is_file():
        return folder
    tmp = folder.with_name(f"{key}.tmp-{os.getpid()}")
    classes = {
        "unet": ("diffusers", "UNet2DConditionModel"),
        "vae": ("diffusers", "AutoencoderKL"),
        "text_encoder": ("transformers", "CLIPTextModel"),
        "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
    }
    for part, (library, class_name) in classes.items():
        config = {k: v for k, v in configs[part].items() if not k.startswith("_")}
        if library == "diffusers":
            config["_class_name"] = class_name
        else:
            config["architectures"] = [class_name]
            config["model_type"] = "clip_text_model"
        (tmp / part).mkdir(parents=True, exist_ok=True)
        (tmp / part / "config.json").write_text(json.dumps(config, indent=2, default=str))
    (tmp / "scheduler").mkdir(exist_ok=True)
    (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
    write_sdxl_tokenizers(tmp)
    index = {
        "_class_name": "StableDiffusionXLPipeline",
        "force_zeros_for_empty_prompt": True,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        **{part: list(lib_cls) for part, lib_cls in classes.items()},
    }
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process won the race; its folder is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
