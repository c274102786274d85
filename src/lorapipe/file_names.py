"""File names several stages agree on (stdlib only, any stage may use it)."""

import os
from pathlib import Path

# The Kohya training TOML at the top of a dataset folder: `dataset sample`/`prepare` write it, `train`, `dataset check`,
# the pipeline and the SageMaker channel read it.
DATASET_CONFIG_NAME = "kohya-sdxl-config.toml"
# Beside the trained LoRA: written by train/report.py, read by pipeline/artifact.py and published with the LoRA.
TRAIN_SUMMARY_NAME = "train_summary.json"

# lorapipe's per-user cache folder (tokenizer and config copies, fetched datasets, file hashes):
# $LORAPIPE_CACHE, else $XDG_CACHE_HOME/lorapipe, else ~/.cache/lorapipe.
CACHE_DIR_ENV = "LORAPIPE_CACHE"


def user_cache_dir() -> Path:
    """The cache folder for this user (not created here)."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "lorapipe"
