"""Build SDXL-architecture pipelines with seeded random weights: the tiny preset for tests and the demo, the
full preset (SDXL 1.0 base shapes) for real-size benchmarks and key checks.

Weights are random but the structure, module names and tokenizers are real, so every code path that a real
checkpoint exercises (LoRA targets, SGM key names, latent arithmetic) is exercised here too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorapipe.sdxl.presets import SCHEDULER_CONFIG, text_encoder_configs, unet_config, vae_config

DTYPES = ("fp32", "fp16", "bf16")


def _dtype_table():
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def dtype_name(dtype) -> str:
    """A torch dtype -> our name for it (fp32 for None or anything else)."""
    return {v: k for k, v in _dtype_table().items()}.get(dtype, "fp32")


def torch_dtype(name: str):
    """Map our dtype names (fp32|fp16|bf16) to torch dtypes."""
    table = _dtype_table()
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return table[name]


def build_models(preset: str = "tiny", *, seed: int = 0, device: str = "cpu", dtype: str = "fp32") -> dict[str, Any]:
    """Instantiate UNet, VAE and both text encoders for `preset` with seeded random weights.

    On `device="meta"` nothing is allocated: use it to check module names and shapes of the full architecture.
    Parts are built in `dtype` on `device` directly (torch's default dtype is set while they are built), so the full
    preset on a GPU in bf16 never holds an fp32 copy.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    te1_cfg, te2_cfg = text_encoder_configs(preset)
    builders = {
        "unet": lambda: UNet2DConditionModel(**unet_config(preset)),
        "vae": lambda: AutoencoderKL(**vae_config(preset)),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**te1_cfg)),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**te2_cfg)),
    }
    torch.manual_seed(seed)
    models = {}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype(dtype))
    try:
        with torch.device(device):
            for name, build in builders.items():
                model = build()
                if dtype != "fp32":  # buffers made with an explicit dtype follow too
                    model.to(torch_dtype(dtype))
                models[name] = model.eval()
    finally:
        torch.set_default_dtype(previous)
    return models


def make_pipeline_folder(out_dir: Path, *, preset: str = "tiny", dtype: str = "fp32", seed: int = 0) -> Path:
    """Write a diffusers-format SDXL pipeline folder (model_index.json, weights, configs, real tokenizers)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    from lorapipe.sdxl.tokenizers import write_sdxl_tokenizers

    out_dir = Path(out_dir)
    models = build_models(preset, seed=seed, dtype=dtype)
    write_sdxl_tokenizers(out_dir)
    scheduler = EulerDiscreteScheduler.from_config(_without_class_name(SCHEDULER_CONFIG))
    pipe = StableDiffusionXLPipeline(
        **models,
        tokenizer=CLIPTokenizer.from_pretrained(out_dir / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(out_dir / "tokenizer_2"),
        scheduler=scheduler,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    # A small marker that says how this folder was made (read by nothing at load time; for people).
    (out_dir / "lorapipe-model.json").write_text(
        json.dumps({"made_by": "lorapipe model make-tiny", "preset": preset, "dtype": dtype, "seed": seed}, indent=2)
    )
    return out_dir


def _without_class_name(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}
