"""Tiny random-weight CLIP and DINOv2 folders built from config, for tests, benchmarks and the offline demo.

The folders hold what `load_metric_models` reads from a downloaded checkpoint (config, weights, image processor,
and for CLIP the real BPE tokenizer), so the real loading path runs. Weights are seeded random: the embeddings are
fixed random features of the pixels, not learned concepts.
"""

from __future__ import annotations

from pathlib import Path

TINY_IMAGE_SIZE = 32


def make_tiny_clip(out_dir: Path, *, seed: int = 0) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from lorapipe.sdxl.tokenizers import write_clip_tokenizer_files

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "vocab_size": 49408,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    out_dir = Path(out_dir)
    CLIPModel(config).save_pretrained(out_dir)
    size = {"shortest_edge": TINY_IMAGE_SIZE}
    CLIPImageProcessor(size=size, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}).save_pretrained(
        out_dir
    )
    write_clip_tokenizer_files(out_dir, pad_token="<|endoftext|>")
    return out_dir


def make_tiny_dino(out_dir: Path, *, seed: int = 0) -> Path:
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=TINY_IMAGE_SIZE,
        patch_size=8,
    )
    out_dir = Path(out_dir)
    Dinov2Model(config).save_pretrained(out_dir)
    BitImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE},
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(out_dir)
    return out_dir


def make_tiny_metric_models(out_dir: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """(clip folder, dino folder) under `out_dir`."""
    out_dir = Path(out_dir)
    return make_tiny_clip(out_dir / "tiny-clip", seed=seed), make_tiny_dino(out_dir / "tiny-dinov2", seed=seed)
