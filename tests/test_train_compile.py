"""Kohya's `torch_compile = true` + `dynamo_backend`: the UNet is compiled in place and trains the same LoRA.

The cheapest backend ("eager": TorchDynamo captures the graph, no code generation) keeps this test to about half a
minute on the CPU; `bench/train_compile.py --backend inductor` measures what compilation buys on a GPU.
"""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from lorapipe.train.run import run_training
from tests.train_fixtures import one_thread  # noqa: F401 (autouse fixture)

# One fixed 64x64 size (no buckets), so the graph is captured once.
COMMON = ("max_train_steps=2", "seed=4", "enable_bucket=false", 'sample_prompts=""', "sample_every_n_steps=0")


def test_compiled_unet_trains_the_same_lora(tiny_model_dir, sample_dataset_dir, tmp_path):
    import torch._dynamo

    torch._dynamo.reset()  # count only this run's captures
    plain = run_training(
        sample_dataset_dir,
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "plain",
        overrides=COMMON,
        show_progress=False,
        step_lines=False,
    )
    compiled = run_training(
        sample_dataset_dir,
        base_model=str(tiny_model_dir),
        output_dir=tmp_path / "compiled",
        overrides=(*COMMON, "torch_compile=true", "dynamo_backend=eager"),
        show_progress=False,
        step_lines=False,
    )
    captured = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    assert captured >= 1  # the compiled run really went through TorchDynamo
    assert compiled.losses == pytest.approx(plain.losses, abs=1e-6)
    a, b = load_file(plain.lora_path), load_file(compiled.lora_path)
    assert a.keys() == b.keys()  # compiling in place keeps Kohya's key names (no `_orig_mod.` prefix)
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-4
