"""Read a Kohya training TOML the way sd-scripts does (sections flattened), or the kohya_ss GUI's saved JSON, and
parse `--set key=value` overrides."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorapipe.errors import ConfigError

SET_SOURCE = "--set"


@dataclass(frozen=True)
class RawConfig:
    """Flat key -> value as written, where each key came from (`file [section]` or `--set`), and warnings."""

    values: dict[str, Any]
    origins: dict[str, str]
    warnings: tuple[str, ...] = ()


def read_training_toml(path: Path) -> RawConfig:
    """Flatten every top-level table into one namespace, as sd-scripts' read_config_from_file does.

    A key given in two sections keeps the later value (sd-scripts' behaviour) and is reported as a warning.
    """
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist; pass an existing Kohya TOML with --config")
    if path.suffix.lower() == ".json":
        return read_gui_json(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the config as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix that line") from None
    if "datasets" in document or "general" in document:
        raise ConfigError(
            f"{path}: this is a dataset_config file ([general]/[[datasets]]), not a training config; "
            f'name it in the training config with dataset_config = "{path.name}"'
        )
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    warnings: list[str] = []
    for name, item in document.items():
        entries = item.items() if isinstance(item, dict) else [(name, item)]
        where = f"{path} [{name}]" if isinstance(item, dict) else str(path)
        for key, value in entries:
            if isinstance(value, dict):
                raise ConfigError(
                    f"{where}: [{key}] is a nested table; Kohya configs have one level of "
                    f"sections holding key = value lines"
                )
            if key in values:
                warnings.append(
                    f"{where}: {key} is also set in {origins[key]}; the later value {value!r} is used "
                    f"(as sd-scripts does)"
                )
            values[key] = value
            origins[key] = where
    return RawConfig(values, origins, tuple(warnings))


def read_gui_json(path: Path) -> RawConfig:
    """The kohya_ss GUI's saved configuration (one flat JSON object of its form fields); null means not set."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the config as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix that line") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: a kohya_ss GUI config is one JSON object of field: value pairs")
    values: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, dict):
            raise ConfigError(f"{path}: {key} is a nested object; kohya_ss GUI configs are flat")
        if value is not None:
            values[key] = value
    return RawConfig(values, {key: str(path) for key in values})


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """`["learning_rate=1e-4", "output_name=me"]` -> values parsed as TOML literals, else kept as strings."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{SET_SOURCE} {item!r}: expected key=value, e.g. --set learning_rate=1e-4")
        parsed[key] = parse_literal(raw.strip())
    return parsed


def parse_literal(raw: str) -> Any:
    """A TOML literal (`1e-4`, `true`, `[\"a=1\"]`, `\"x\"`) or, when it is not one, the text itself."""
    if raw == "":
        return ""
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw
