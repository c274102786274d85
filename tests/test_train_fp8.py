"""fp8 base weights (fp8_base / fp8_base_unet) on the tiny model: same loss curve as bf16 within 2%, the frozen
weights stored in half the bytes, the LoRA untouched, and the config check."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from lorapipe.errors import ConfigError
from lorapipe.train.fp8 import FP8_STORAGE, fp8_parts, store_base_in_fp8, stored_bytes
from lorapipe.train.run import run_training
from tests.train_fixtures import one_thread  # noqa: F401 (autouse fixture)

# bf16 with cached latents and text-encoder outputs; gradient checkpointing exercises the recompute with fp8.
COMMON = (
    "mixed_precision=bf16",
    "max_train_steps=4",
    "save_every_n_epochs=0",
    "cache_latents=true",
    "cache_text_encoder_outputs=true",
    "network_train_unet_only=true",
    "gradient_checkpointing=true",
)
# Measured: the fp8 curve stays within 1% of bf16 per step on the tiny model; 2% leaves room for other CPUs.
RELATIVE_TOLERANCE = 0.02


def test_fp8_base_follows_the_bf16_loss_curve(tiny_model_dir, sample_dataset_dir, tmp_path):
    args = {"base_model": str(tiny_model_dir), "show_progress": False, "step_lines": False}
    bf16 = run_training(sample_dataset_dir, output_dir=tmp_path / "bf16", overrides=COMMON, **args)
    fp8 = run_training(sample_dataset_dir, output_dir=tmp_path / "fp8", overrides=COMMON + ("fp8_base=true",), **args)
    assert len(fp8.losses) == len(bf16.losses) == 4
    for ours, reference in zip(fp8.losses, bf16.losses):
        assert abs(ours - reference) <= RELATIVE_TOLERANCE * reference
    assert fp8.losses != bf16.losses  # the weights really were rounded to fp8
    with safe_open(str(fp8.lora_path), "pt") as f:
        assert f.metadata()["ss_fp8_base"] == "True"  # as sd-scripts records it


def test_fp8_storage_halves_the_frozen_weights_and_leaves_the_lora_alone(tiny_model_dir):
    from lorapipe.lora.network import attach_kohya_lora
    from lorapipe.sdxl.load import load_sdxl_pipeline

    pipe = load_sdxl_pipeline(str(tiny_model_dir), dtype="bf16")
    unet, te1, te2 = pipe.unet, pipe.text_encoder, pipe.text_encoder_2
    for model in (unet, te1, te2):
        model.requires_grad_(False)
    frozen_before = stored_bytes(unet)
    layers = store_base_in_fp8(
        {"unet": unet, "text_encoder": te1, "text_encoder_2": te2}, fp8_parts(False, True), torch.bfloat16
    )
    assert layers > 0
    assert stored_bytes(unet) <= 0.55 * frozen_before  # norms and conv_in stay bf16: a little over half
    # The LoRA attaches around the fp8-stored layers, as in training, and keeps its own dtype.
    network = attach_kohya_lora(
        unet, te1, te2, network_dim=4, network_alpha=1.0, train_unet=True, train_text_encoder=False, seed=0
    )
    assert all(p.dtype == torch.float32 for p in network.lora_parameters())
    assert all(p.dtype != FP8_STORAGE for p in te1.parameters())  # fp8_base_unet: text encoders untouched
    sample = torch.randn(1, 4, 8, 8, dtype=torch.bfloat16)
    with torch.no_grad():  # the layers still compute in bf16
        out = unet(
            sample,
            torch.tensor([10]),
            torch.randn(1, 77, unet.config.cross_attention_dim, dtype=torch.bfloat16),
            added_cond_kwargs={
                "text_embeds": torch.randn(1, te2.config.projection_dim, dtype=torch.bfloat16),
                "time_ids": torch.zeros(1, 6, dtype=torch.bfloat16),
            },
        ).sample
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def _extra_bytes_kept_for_backward(fp8: bool) -> int:
    """Bytes autograd keeps for the backward of one U-Net forward, beyond the parameters themselves."""
    from lorapipe.lora.network import attach_kohya_lora
    from lorapipe.sdxl.load import load_sdxl_pipeline

    pipe = load_sdxl_pipeline("random:tiny", random_dtype=torch.bfloat16)
    unet = pipe.unet.requires_grad_(False)
    if fp8:
        store_base_in_fp8({"unet": unet}, ("unet",), torch.bfloat16)
    attach_kohya_lora(
        unet, None, None, network_dim=4, network_alpha=1.0, train_unet=True, train_text_encoder=False, seed=0
    )
    params = {p.untyped_storage().data_ptr() for p in unet.parameters()}
    kept = []

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in params:
            kept.append(tensor.numel() * tensor.element_size())
        return tensor

    bf16 = torch.bfloat16
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=bf16):
        unet(
            torch.randn(1, 4, 32, 32, dtype=bf16),
            torch.tensor([500]),
            torch.randn(1, 77, unet.config.cross_attention_dim, dtype=bf16),
            added_cond_kwargs={
                "text_embeds": torch.randn(1, pipe.text_encoder_2.config.projection_dim, dtype=bf16),
                "time_ids": torch.zeros(1, 6, dtype=bf16),
            },
        )
    return sum(kept)


def test_fp8_keeps_no_bf16_weight_copies_for_the_backward():
    """Without gradient checkpointing too: what the backward keeps is the activations, as in bf16, not a bf16 copy
    of every layer (what autocasting an fp8 weight would keep)."""
    assert _extra_bytes_kept_for_backward(fp8=True) <= 1.01 * _extra_bytes_kept_for_backward(fp8=False)


def test_fp8_parts_follow_sd_scripts():
    assert fp8_parts(True, False) == ("unet", "text_encoder", "text_encoder_2")
    assert fp8_parts(False, True) == fp8_parts(True, True) == ("unet",)
    assert fp8_parts(False, False) == ()


def test_fp8_base_needs_mixed_precision(tiny_model_dir, sample_dataset_dir, tmp_path):
    with pytest.raises(ConfigError, match="fp8_base needs mixed_precision"):
        run_training(
            sample_dataset_dir,
            base_model=str(tiny_model_dir),
            output_dir=tmp_path / "o",
            overrides=("mixed_precision=no", "fp8_base=true", "max_train_steps=1"),
            show_progress=False,
        )
