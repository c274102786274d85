"""A `DatasetBlueprint` from a Kohya training config: the flat keys (folder mode) or its `--dataset_config` file.

`blueprint_from_args` reads the flat Kohya training keys (`--config_file` style: subsets are the
`<repeats>_<name>` folders of train_data_dir and reg_data_dir) and hands over to `blueprint_from_dataset_config`
when `dataset_config` is set (strict keys, `dataset/dataset_toml.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorapipe.dataset.blueprint import (
    DatasetBlueprint,
    SubsetSpec,
    dataset_params,
    flat_layer,
    run_params,
    subset_from_layers,
)
from lorapipe.dataset.dataset_toml import read_dataset_config
from lorapipe.dataset.layout import find_folder_subsets, resolve_data_dir
from lorapipe.errors import ConfigError, DatasetError


def blueprint_from_args(args: Mapping[str, Any], *, source: str, dataset_dir: Path | None = None) -> DatasetBlueprint:
    """Folder mode: subsets are the `<repeats>_<name>` folders of train_data_dir (and reg_data_dir).

    `dataset_dir` stands in for train_data_dir when that is unset or a SageMaker `/opt/ml/...` path that does not
    exist here; by default it is the folder of `source` when `source` is an existing file.
    """
    source_path = Path(source)
    if dataset_dir is None and source_path.is_file():
        dataset_dir = source_path.parent
    if args.get("dataset_config"):
        config_path = Path(str(args["dataset_config"])).expanduser()
        if not config_path.is_absolute() and dataset_dir is not None and (dataset_dir / config_path).is_file():
            config_path = dataset_dir / config_path
        return blueprint_from_dataset_config(config_path, args)
    layer = flat_layer(args)
    params, notes = dataset_params((layer,), source)
    train_dir, note = resolve_data_dir(args.get("train_data_dir"), dataset_dir, "train_data_dir")
    if note is not None:
        notes.append(note)
    if train_dir is None:
        configured = args.get("train_data_dir")
        if configured:
            raise DatasetError(f"{configured}: train_data_dir does not exist; fix train_data_dir in {source}")
        raise ConfigError(f"{source}: train_data_dir is missing; set it to the parent of <repeats>_<name> folders")
    subsets: list[SubsetSpec] = []
    for parent, is_reg in ((train_dir, False), (_reg_dir(args, source), True)):
        if parent is None:
            continue
        found, problems = find_folder_subsets(parent, is_reg=is_reg)
        notes.extend(problems)
        for folder in found:
            spec, subset_notes = subset_from_layers(
                folder.path,
                ({"num_repeats": folder.num_repeats, "class_tokens": folder.class_tokens}, layer),
                source,
                is_reg=is_reg,
            )
            subsets.append(spec)
            notes.extend(subset_notes)
    return DatasetBlueprint(
        subsets=tuple(subsets), source=source, notes=tuple(notes), **params, **run_params(args, source)
    )


def _reg_dir(args: Mapping[str, Any], source: str) -> Path | None:
    configured = args.get("reg_data_dir")
    if not configured:
        return None
    path = Path(str(configured)).expanduser()
    if not path.is_dir():
        raise DatasetError(f"{configured}: reg_data_dir does not exist; fix reg_data_dir in {source} or remove it")
    return path


def blueprint_from_dataset_config(path: Path, args: Mapping[str, Any]) -> DatasetBlueprint:
    """A `--dataset_config` TOML/JSON with sd-scripts' strict schema; `args` are the flat fallbacks."""
    return read_dataset_config(Path(path), args)
