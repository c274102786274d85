"""dim_from_weights: continue a LoRA at the ranks and alphas its file has, whatever network_dim says."""

from __future__ import annotations

import pytest
from safetensors import safe_open

from lorapipe.errors import ConfigError
from lorapipe.train.run import run_training
from tests.train_fixtures import one_thread  # noqa: F401 (autouse fixture)

COMMON = ("max_train_steps=1", "seed=3", 'sample_prompts=""', "sample_every_n_steps=0", "save_precision=float")


def _shapes(path) -> dict[str, tuple]:
    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def test_ranks_come_from_the_file(tiny_model_dir, sample_dataset_dir, tmp_path):
    first = run_training(
        sample_dataset_dir,
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "a",
        overrides=(*COMMON, "network_dim=2", "network_alpha=2", "network_train_unet_only=true"),
        show_progress=False,
        step_lines=False,
    )
    second = run_training(
        sample_dataset_dir,
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "b",
        overrides=(*COMMON, "network_dim=8", f"network_weights={first.lora_path}", "dim_from_weights=true"),
        show_progress=False,
        step_lines=False,
    )
    before, after = _shapes(first.lora_path), _shapes(second.lora_path)
    assert after == before  # rank 2, UNet modules only, as in the file (network_dim = 8 does not apply)
    assert all(shape[0] == 2 for key, shape in after.items() if key.endswith("lora_down.weight"))
    with safe_open(str(second.lora_path), "pt") as f:
        assert float(f.get_tensor(next(k for k in after if k.endswith(".alpha")))) == 2.0


def test_dim_from_weights_needs_network_weights(tiny_model_dir, sample_dataset_dir, tmp_path):
    with pytest.raises(ConfigError, match="dim_from_weights.*network_weights"):
        run_training(
            sample_dataset_dir,
            base_model=str(tiny_model_dir),
            output_dir=tmp_path / "o",
            overrides=(*COMMON, "dim_from_weights=true"),
            show_progress=False,
        )
