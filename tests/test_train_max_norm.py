"""`scale_weight_norms` (Kohya's max-norm regularisation): every saved module's update norm is at most the limit."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from lorapipe.train.loop import module_update
from lorapipe.train.run import run_training
from tests.train_fixtures import one_thread  # noqa: F401 (autouse fixture)

COMMON = (
    "max_train_steps=3",
    "seed=8",
    "save_precision=float",
    'sample_prompts=""',
    "sample_every_n_steps=0",
    "learning_rate=0.01",
)


def test_module_update_matches_applying_down_then_up():
    torch.manual_seed(0)
    down, up = torch.randn(4, 6), torch.randn(5, 4)
    x = torch.randn(3, 6)
    assert torch.allclose(x @ module_update(down, up, 0.5).T, 0.5 * (x @ down.T) @ up.T, atol=1e-5)
    # Conv LoRA: a 3x3 down conv then a 1x1 up conv equals one 3x3 conv with the composed kernel.
    down_c, up_c = torch.randn(4, 6, 3, 3), torch.randn(5, 4, 1, 1)
    image = torch.randn(1, 6, 8, 8)
    both = torch.nn.functional.conv2d(torch.nn.functional.conv2d(image, down_c, padding=1), up_c)
    assert torch.allclose(
        torch.nn.functional.conv2d(image, module_update(down_c, up_c, 1.0), padding=1), both, atol=1e-4
    )


def _update_norms(path) -> dict[str, float]:
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    norms = {}
    for key in tensors:
        if key.endswith(".lora_down.weight"):
            name = key[: -len(".lora_down.weight")]
            down, up = tensors[key], tensors[f"{name}.lora_up.weight"]
            norms[name] = float(module_update(down, up, float(tensors[f"{name}.alpha"]) / down.shape[0]).norm())
    return norms, meta


def test_scale_weight_norms_caps_every_module_update(tiny_model_dir, sample_dataset_dir, tmp_path):
    free = run_training(
        sample_dataset_dir,
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "free",
        overrides=COMMON,
        show_progress=False,
        step_lines=False,
    )
    free_norms, _ = _update_norms(free.lora_path)
    limit = sorted(free_norms.values())[len(free_norms) // 2]  # the median: half the modules are above it
    assert max(free_norms.values()) > limit * 1.05
    capped = run_training(
        sample_dataset_dir,
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "capped",
        overrides=(*COMMON, f"scale_weight_norms={limit}"),
        show_progress=False,
        step_lines=False,
    )
    norms, meta = _update_norms(capped.lora_path)
    assert max(norms.values()) <= limit * (1 + 1e-4)
    assert sum(n > limit * 0.999 for n in norms.values()) >= len(norms) // 4  # many sit on the cap
    assert float(meta["ss_scale_weight_norms"]) == pytest.approx(limit)
