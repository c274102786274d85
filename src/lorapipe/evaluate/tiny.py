"""Tiny random-weight CLIP and DINOv2 folders built from config, for tests, benchmarks and the offline demo, and a
tiny SDXL whose VAE can carry a subject.

The folders hold what `load_metric_models` reads from a downloaded checkpoint (config, weights, image processor,
and for CLIP the real BPE tokenizer), so the real loading path runs. Weights are seeded random: the embeddings are
fixed random features of the pixels, not learned concepts.

A random-weight VAE decodes every latent to much the same image (its reconstructions do not correlate with its
input), so no LoRA on a random tiny SDXL can bring its images closer to the training images, and the measures
cannot tell a trained checkpoint from none. `fit_tiny_vae` trains the tiny VAE for a few seconds on the subject's
images, so latents carry colour and layout as a real SDXL VAE's do; then training moves the images and the measures
see it.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def fit_tiny_vae(
    model_dir: Path,
    images: Sequence[Path],
    *,
    side: int = 64,
    steps: int = 50,
    learning_rate: float = 5e-3,
    seed: int = 0,
) -> Path:
    """Fit the VAE of a tiny diffusers SDXL folder (in place) to reconstruct `images` at `side` px; returns the folder.

    The encoder is then rescaled so the latents' spread matches SDXL's scaling factor (the trainer multiplies by the
    fixed 0.13025, as sd-scripts does): the same exact reparametrisation a real VAE's latents satisfy.
    """
    import numpy as np
    import torch
    from diffusers import AutoencoderKL
    from PIL import Image

    folder = Path(model_dir) / "vae"
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_pretrained(folder).float().train()
    arrays = [np.asarray(Image.open(path).convert("RGB").resize((side, side)), dtype=np.float32) for path in images]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0  # SDXL's [-1, 1] range
    optimizer = torch.optim.Adam(vae.parameters(), lr=learning_rate)
    for _ in range(steps):
        reconstruction = vae.decode(vae.encode(pixels).latent_dist.mean).sample
        loss = torch.nn.functional.mse_loss(reconstruction, pixels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        spread = float(vae.encode(pixels).latent_dist.mean.std())
        gain = 1.0 / (vae.config.scaling_factor * spread)  # latents * scaling_factor then have unit spread
        channels = vae.config.latent_channels
        vae.quant_conv.weight[:channels] *= gain  # the mean half of the moments; the log-variance half is unused
        vae.quant_conv.bias[:channels] *= gain
        vae.post_quant_conv.weight /= gain
    vae.eval().save_pretrained(folder)
    return Path(model_dir)
