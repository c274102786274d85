"""Helpers for the pipeline tests: a real (tiny) LoRA-shaped safetensors artifact and SeaweedFS access."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_artifact(folder: Path, name: str = "dwjz_toy", samples: int = 2, seed: int = 0) -> Path:
    """A trainer-shaped output folder: <name>.safetensors (Kohya key names), train_summary.json, sample/*.png."""
    from PIL import Image
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = {
        "lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight": rng.standard_normal((4, 32), np.float32),
        "lora_unet_down_blocks_1_attentions_0_proj_in.lora_up.weight": rng.standard_normal((32, 4), np.float32),
        "lora_unet_down_blocks_1_attentions_0_proj_in.alpha": np.array(1.0, np.float32),
    }
    save_file(tensors, str(folder / f"{name}.safetensors"), metadata={"ss_output_name": name})
    (folder / "train_summary.json").write_text(json.dumps({"output_name": name, "steps": 2}))
    if samples:
        (folder / "sample").mkdir(exist_ok=True)
        for index in range(samples):
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "sample" / f"{name}_{index:02d}.png")
    return folder
