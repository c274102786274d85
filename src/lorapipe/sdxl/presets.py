"""Architecture configs of SDXL 1.0 base ("full") and of our tiny SDXL-shaped model ("tiny").

The full configs are those published with stabilityai/stable-diffusion-xl-base-1.0; keeping them here lets us
build the real architecture offline (benchmarks, key checks) and resolve single-file checkpoints without a hub.
The tiny preset keeps SDXL's *shape* (three UNet levels DownBlock2D + 2x CrossAttnDownBlock2D, a four-block VAE
that downsamples 8x, two CLIP encoders whose widths add up to the cross-attention width) and shrinks widths and
depths so that it builds in seconds on two CPU cores.
"""

from __future__ import annotations

from typing import Any

from lorapipe.sdxl.constants import (
    BETA_END,
    BETA_SCHEDULE,
    BETA_START,
    CLIP_VOCAB_SIZE,
    NUM_TRAIN_TIMESTEPS,
    VAE_SCALE_FACTOR,
)

PRESETS = ("tiny", "full")

_DOWN = ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
_UP = ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]

SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
    "beta_start": BETA_START,
    "beta_end": BETA_END,
    "beta_schedule": BETA_SCHEDULE,
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
}


def unet_config(preset: str) -> dict[str, Any]:
    """UNet2DConditionModel config for a preset."""
    common = {
        "sample_size": 128,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": _DOWN,
        "up_block_types": _UP,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "layers_per_block": 2,
        "addition_embed_type": "text_time",
        "use_linear_projection": True,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "act_fn": "silu",
    }
    if preset == "full":
        return common | {
            "block_out_channels": [320, 640, 1280],
            "transformer_layers_per_block": [1, 2, 10],
            "attention_head_dim": [5, 10, 20],
            "cross_attention_dim": 2048,
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816,  # 6 size ids x 256 + pooled 1280
            "norm_num_groups": 32,
        }
    _check(preset)
    return common | {
        "sample_size": 16,
        "block_out_channels": [32, 64, 64],
        "transformer_layers_per_block": [1, 1, 2],
        "attention_head_dim": [2, 4, 4],
        "cross_attention_dim": 80,  # te1 hidden 32 + te2 hidden 48
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 96,  # 6 size ids x 8 + pooled 48
        "norm_num_groups": 8,
    }


def vae_config(preset: str) -> dict[str, Any]:
    """AutoencoderKL config; four blocks in both presets so latents are 1/8 of the pixels."""
    common = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "latent_channels": 4,
        "layers_per_block": 2,
        "act_fn": "silu",
        "scaling_factor": VAE_SCALE_FACTOR,
        "force_upcast": True,
    }
    if preset == "full":
        return common | {"block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32, "sample_size": 1024}
    _check(preset)
    return common | {
        "block_out_channels": [8, 16, 16, 16],
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "sample_size": 128,
    }


def text_encoder_configs(preset: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """CLIPTextConfig kwargs for text_encoder (CLIP ViT-L) and text_encoder_2 (OpenCLIP bigG)."""
    common = {
        "vocab_size": CLIP_VOCAB_SIZE,
        "max_position_embeddings": 77,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
        "layer_norm_eps": 1e-5,
    }
    if preset == "full":
        te1 = common | {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "projection_dim": 768,
            "hidden_act": "quick_gelu",
        }
        te2 = common | {
            "hidden_size": 1280,
            "intermediate_size": 5120,
            "num_hidden_layers": 32,
            "num_attention_heads": 20,
            "projection_dim": 1280,
            "hidden_act": "gelu",
        }
        return te1, te2
    _check(preset)
    # The two widths differ as in SDXL (768 vs 1280): single-file loaders tell the encoders apart by width.
    te1 = common | {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 5,
        "num_attention_heads": 4,
        "projection_dim": 32,
        "hidden_act": "quick_gelu",
    }
    te2 = common | {
        "hidden_size": 48,
        "intermediate_size": 53,
        "num_hidden_layers": 5,
        "num_attention_heads": 4,
        "projection_dim": 48,
        "hidden_act": "gelu",
    }
    return te1, te2


def _check(preset: str) -> None:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
