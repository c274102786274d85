"""Typed reading of Kohya dataset option values, with sd-scripts' defaults and one-line errors.

Kohya config files are lenient about types (the GUI writes numbers as strings, flags as 0/1), so each reader
accepts those forms and rejects anything else with a `ConfigError` naming the key and the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lorapipe.errors import ConfigError

# Per-subset options: name -> sd-scripts default. Looked up subset -> dataset -> [general] -> flat args -> default.
SUBSET_DEFAULTS: dict[str, Any] = {
    "num_repeats": 1,
    "class_tokens": None,
    "alpha_mask": False,
    "caption_extension": ".caption",
    "shuffle_caption": False,
    "caption_separator": ",",
    "keep_tokens": 0,
    "keep_tokens_separator": "",
    "secondary_separator": None,
    "enable_wildcard": False,
    "caption_prefix": None,
    "caption_suffix": None,
    "caption_dropout_rate": 0.0,
    "caption_dropout_every_n_epochs": 0,
    "caption_tag_dropout_rate": 0.0,
    "token_warmup_min": 1,
    "token_warmup_step": 0,
    "color_aug": False,
    "flip_aug": False,
    "random_crop": False,
    "face_crop_aug_range": None,
    "resize_interpolation": None,
    "cache_info": False,
    "custom_attributes": None,
}
# Shared by all subsets of a dataset.
DATASET_DEFAULTS: dict[str, Any] = {
    "resolution": None,
    "batch_size": 1,
    "enable_bucket": False,
    "min_bucket_reso": 256,
    "max_bucket_reso": 1024,
    "bucket_reso_steps": 64,
    "bucket_no_upscale": False,
    "network_multiplier": 1.0,
    "validation_split": 0.0,
    "validation_seed": None,
    "resize_interpolation": None,
}
RESIZE_INTERPOLATIONS = ("lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area", "box")

_BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def as_bool(value: Any, key: str, source: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.strip().lower()]
    raise ConfigError(f"{source}: {key} = {value!r} is not true/false; write {key} = true or {key} = false")


def as_int(value: Any, key: str, source: str, *, minimum: int | None = None) -> int:
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value.strip())
    if number is None:
        raise ConfigError(f"{source}: {key} = {value!r} is not a whole number")
    if minimum is not None and number < minimum:
        raise ConfigError(f"{source}: {key} = {number} must be at least {minimum}")
    return number


def as_float(value: Any, key: str, source: str, *, low: float | None = None, high: float | None = None) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {key} = {value!r} is not a number") from None
    if (low is not None and number < low) or (high is not None and number > high):
        raise ConfigError(f"{source}: {key} = {number} must be between {low} and {high}")
    return number


def as_str(value: Any, key: str, source: str) -> str:
    if isinstance(value, str):
        return value
    raise ConfigError(f"{source}: {key} = {value!r} must be a quoted string")


def as_resolution(value: Any, key: str, source: str) -> tuple[int, int]:
    """`"1024,1024"`, `"1024"`, `1024` or `[w, h]` -> (w, h), as sd-scripts reads the flat and dataset TOMLs."""
    parts: list[Any]
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise ConfigError(f"{source}: {key} = {value!r} must be 'size' or 'width,height', e.g. \"1024,1024\"")
    width, height = (as_int(p, key, source, minimum=1) for p in parts)
    return width, height


def caption_extension(value: Any, source: str) -> str:
    text = as_str(value, "caption_extension", source)
    return text if text.startswith(".") or not text else "." + text


def lookup(key: str, layers: tuple[Mapping[str, Any], ...], default: Any) -> Any:
    """First non-None value of `key` in `layers` (most specific first), else the default."""
    for layer in layers:
        value = layer.get(key)
        if value is not None:
            return value
    return default
