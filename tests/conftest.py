"""Shared fixtures: tiny real components built once per session (seeded, CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tiny models are dominated by per-op overhead: one thread per process is several times faster than torch's
# default on two cores, and subprocesses (trainer workers, servers) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# Tests never reach a hub: fail fast instead of hanging on a network call.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers-format tiny SDXL pipeline folder with seeded random weights and real tokenizers."""
    from lorapipe.sdxl.factory import make_pipeline_folder

    return make_pipeline_folder(tmp_path_factory.mktemp("models") / "tiny-sdxl", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def sample_dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root folder holding `0001-dataset/` (the Kohya-layout sample dataset). Tests must not modify it."""
    from lorapipe.dataset.sample import write_sample_dataset

    root = tmp_path_factory.mktemp("datasets")
    write_sample_dataset(root)
    return root


@pytest.fixture(scope="session")
def sample_dataset_dir(sample_dataset_root: Path) -> Path:
    """The `0001-dataset/` folder: kohya-sdxl-config.toml beside `20_dwjz toy/`. Read-only for tests."""
    return sample_dataset_root / "0001-dataset"


@pytest.fixture(scope="session")
def tiny_metric_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(CLIP folder, DINOv2 folder): seeded random-weight metric models for `lorapipe eval` and its pipeline step."""
    from lorapipe.evaluate.tiny import make_tiny_metric_models

    return make_tiny_metric_models(tmp_path_factory.mktemp("metric-models"))


# One SeaweedFS S3 server for the whole session, shared by every test that asks for `seaweed_s3`.
from s3_fixtures import seaweed_s3  # noqa: E402,F401
