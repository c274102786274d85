"""A CUDA out-of-memory inside the real training step becomes advice naming the options and what each saves."""

from __future__ import annotations

import pytest
import torch

from lorapipe.errors import TrainingError
from lorapipe.train.memory_savings import SAVINGS_FILE, load_savings
from lorapipe.train.run import run_training
from tests.train_fixtures import one_thread  # noqa: F401 (autouse fixture)


@pytest.fixture
def unet_runs_out_of_memory():
    """Every U-Net forward raises the error torch raises when CUDA allocation fails (a torch-level hook)."""

    def raise_oom(module, args):
        if type(module).__name__ == "UNet2DConditionModel":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    handle = torch.nn.modules.module.register_module_forward_pre_hook(raise_oom)
    yield
    handle.remove()


def test_out_of_memory_names_the_options_with_their_savings(
    tiny_model_dir, sample_dataset_dir, tmp_path, unet_runs_out_of_memory
):
    with pytest.raises(TrainingError) as caught:
        run_training(
            sample_dataset_dir,
            base_model=str(tiny_model_dir),
            output_dir=tmp_path / "o",
            overrides=(
                "mixed_precision=bf16",
                "max_train_steps=2",
                "cache_latents=true",
                "cache_text_encoder_outputs=true",
                "network_train_unet_only=true",
                "gradient_checkpointing=false",
                "optimizer_type=AdamW",
            ),
            show_progress=False,
        )
    message = str(caught.value)
    assert message.startswith("out of GPU memory after step 0;")
    table = load_savings()["options"]
    fp8 = table["fp8_base_unet"]["bytes"] / 2**30  # cached TE outputs: only the U-Net's share is named
    assert f"fp8_base = true (saves ~{fp8:.1f} GiB at SDXL 1024 px; estimate" in message
    assert 'optimizer_type = "AdamW8bit" (saves ~' in message
    assert "gradient_checkpointing = true (saving not yet measured on a GPU)" in message
    assert "cache_latents = true" not in message  # already on


def test_the_shipped_savings_table_matches_the_estimates():
    """The file `bench/gpu/check.py` writes and the package ships: same figures as recomputing them now."""
    from lorapipe.train.memory_savings import estimate_savings

    shipped = load_savings(SAVINGS_FILE)
    if shipped.get("measured_on"):
        pytest.skip("the shipped table holds GPU measurements")
    assert shipped == estimate_savings(network_dim=32)
