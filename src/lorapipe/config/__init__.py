"""Kohya training configs -> one frozen `TrainConfig` (no torch; used before any model loads).

- `load_train_config(dataset_dir, *, config_path=None, overrides=(), output_dir=None, base_model=None)` ->
  `LoadedConfig(.config: TrainConfig, .warnings)`; raises `ConfigProblems` (a `ConfigError`) naming key and file.
- `TrainConfig`: one attribute per supported sdxl_train_network.py option (the Kohya key names and defaults), plus
  `conv_dim`/`conv_alpha` and `network_options` (a frozen `NetworkOptions`: rank/module dropout, block-wise ranks,
  LoRA+ ratios) parsed from network_args, `dataset` (a `DatasetBlueprint`), `source`, `dataset_dir`, `to_dict()`.
- `KEY_TABLE`: every key with its status (supported / dataset / mapped / ignored / rejected) and reason.
- Output folder when the config's is a SageMaker path that does not exist here and no --output-dir is given:
  `default_output_dir(dataset_dir)` = `<dataset parent>/output/<dataset folder name>`.
"""

from lorapipe.config.keys import KEY_TABLE, KeySpec
from lorapipe.config.load import ConfigProblems, default_output_dir, load_train_config
from lorapipe.config.model import LoadedConfig, NetworkOptions, TrainConfig

__all__ = [
    "KEY_TABLE",
    "ConfigProblems",
    "KeySpec",
    "LoadedConfig",
    "NetworkOptions",
    "TrainConfig",
    "default_output_dir",
    "load_train_config",
]
