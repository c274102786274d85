"""sd-scripts' `--dataset_config` file: `[general]`, `[[datasets]]`, `[[datasets.subsets]]`, strict keys.

Lookup order for every value is subset -> dataset -> [general] -> flat training args -> sd-scripts default, as
in `BlueprintGenerator.generate_params_by_fallbacks`. An unknown key is an error naming the key, the table and
the file (sd-scripts says "extra keys not allowed").
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from lorapipe.dataset import options as opt
from lorapipe.dataset.blueprint import (
    DatasetBlueprint,
    SubsetSpec,
    dataset_params,
    flat_layer,
    run_params,
    subset_from_layers,
)
from lorapipe.dataset.problems import Problem, warning
from lorapipe.errors import ConfigError, DatasetError

_SUBSET_ONLY = frozenset({"image_dir", "is_reg", "alpha_mask", "metadata_file", "conditioning_data_dir"})
# alpha_mask has a default (the flat --alpha_mask flag) but, as in sd-scripts, only subsets may set it in the TOML.
_SUBSET_ASCENDABLE = frozenset(opt.SUBSET_DEFAULTS) - {"alpha_mask"}
_DATASET_ONLY = frozenset(opt.DATASET_DEFAULTS)
_GENERAL_KEYS = _SUBSET_ASCENDABLE | _DATASET_ONLY
_DATASET_KEYS = _GENERAL_KEYS | {"subsets"}
_SUBSET_KEYS = _SUBSET_ASCENDABLE | _SUBSET_ONLY | {"resize_interpolation"}


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"{path}: dataset_config file does not exist; fix the path")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        if path.suffix.lower() != ".toml":
            raise ConfigError(f"{path}: dataset_config must end in .toml or .json")
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from None


def _check_keys(table: Mapping[str, Any], allowed: frozenset[str], where: str, path: Path) -> None:
    for key in table:
        if key not in allowed:
            hint = ""
            if key in ("settings", "model", "training") or key in ("learning_rate", "network_dim", "output_dir"):
                hint = " (this looks like a training config, not a dataset config)"
            raise ConfigError(f"{path}: {where}: unknown key '{key}'{hint}; see sd-scripts docs/config_README-en.md")


def _resolve_image_dir(raw: Any, path: Path) -> Path:
    text = opt.as_str(raw, "image_dir", str(path))
    image_dir = Path(text).expanduser()
    if not image_dir.is_absolute():
        # sd-scripts resolves against the working directory; beside the TOML is what a copied dataset needs.
        beside = path.parent / image_dir
        image_dir = beside if beside.is_dir() else image_dir.resolve()
    if not image_dir.is_dir():
        raise DatasetError(f"{image_dir}: image_dir in {path} does not exist; fix the path")
    return image_dir


def read_dataset_config(path: Path, args: Mapping[str, Any]) -> DatasetBlueprint:
    data = _load(path)
    source = str(path)
    _check_keys(data, frozenset({"general", "datasets"}), "top level", path)
    general = data.get("general", {})
    if not isinstance(general, dict):
        raise ConfigError(f"{path}: [general] must be a table")
    _check_keys(general, _GENERAL_KEYS, "[general]", path)
    datasets = data.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise ConfigError(f"{path}: no [[datasets]] table; add one with [[datasets.subsets]] image_dir = ...")
    flat = flat_layer(args)
    notes: list[Problem] = []
    if args.get("train_data_dir") or args.get("reg_data_dir"):
        notes.append(warning(source, "train_data_dir/reg_data_dir are ignored because dataset_config is set"))
    tables = []
    for number, dataset in enumerate(datasets):
        where = "[[datasets]]" if len(datasets) == 1 else f"[[datasets]] #{number + 1}"
        tables.append(_read_table(dataset, general, flat, number, where, path, notes))
    run = run_params(args, source)
    first_params, first_subsets = tables[0]
    more = tuple(DatasetBlueprint(subsets=subsets, source=source, **params, **run) for params, subsets in tables[1:])
    return DatasetBlueprint(
        subsets=tuple(s for _, subsets in tables for s in subsets),
        source=source,
        notes=tuple(notes),
        more_datasets=more,
        from_dataset_config=True,
        **first_params,
        **run,
    )


def _read_table(
    dataset, general, flat, number: int, where: str, path: Path, notes: list[Problem]
) -> tuple[dict, tuple[SubsetSpec, ...]]:
    """One [[datasets]] table: its options and its subsets (tagged with the table's number). The same image_dir
    may appear in two tables (the same photos at two resolutions), not twice in one."""
    source = str(path)
    seen: set[Path] = set()
    if not isinstance(dataset, dict):
        raise ConfigError(f"{path}: {where} must be a table")
    _check_keys(dataset, _DATASET_KEYS, where, path)
    params, table_notes = dataset_params((dataset, general, flat), source)
    notes.extend(table_notes)
    subsets: list[SubsetSpec] = []
    raw_subsets = dataset.get("subsets")
    if not isinstance(raw_subsets, list) or not raw_subsets:
        raise ConfigError(f"{path}: {where} has no [[datasets.subsets]]; add one with image_dir = ...")
    for index, raw in enumerate(raw_subsets, start=1):
        place = f"{where} [[datasets.subsets]] #{index}" if number else f"[[datasets.subsets]] #{index}"
        _check_keys(raw, _SUBSET_KEYS, place, path)
        if "metadata_file" in raw:
            raise ConfigError(f"{path}: {place}: metadata_file (fine-tuning datasets) is not supported; use image_dir")
        if "conditioning_data_dir" in raw:
            raise ConfigError(
                f"{path}: {place}: conditioning_data_dir (mask images for masked_loss) is not "
                "supported; put the mask in the images' alpha channel and set alpha_mask = true"
            )
        if "image_dir" not in raw:
            raise ConfigError(f"{path}: {place}: image_dir is required")
        image_dir = _resolve_image_dir(raw["image_dir"], path)
        if image_dir in seen:
            notes.append(warning(image_dir, f"{place} repeats an image_dir of this dataset and is ignored"))
            continue
        seen.add(image_dir)
        is_reg = opt.as_bool(raw.get("is_reg", False), "is_reg", source)
        spec, subset_notes = subset_from_layers(image_dir, (raw, dataset, general, flat), source, is_reg=is_reg)
        subsets.append(replace(spec, dataset_index=number))
        notes.extend(subset_notes)
    return params, tuple(subsets)
