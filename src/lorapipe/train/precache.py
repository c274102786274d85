"""Fill the latent / text-encoder caches before the first step, then move the frozen encoders off the GPU
(sd-scripts caches up front for the same reason: the VAE and text encoders then cost no VRAM while training)."""

from __future__ import annotations

import random

import numpy as np
import torch


def precache(session, plan, *, offload: bool = True) -> int:
    """Encode every distinct training image (and its mirror for flip_aug) and caption once; returns #items."""
    from lorapipe.dataset.batches import load_sample

    models = session.models
    # The automatic text cache fills as captions come up (no image decoding up front, encoders stay in place).
    te_cache = None if session.te_cache_automatic else session.te_cache
    if session.latent_cache is None and te_cache is None:
        return 0
    seen = set()
    for item in plan.scan.items:
        if item.path in seen:
            continue
        seen.add(item.path)
        sample = load_sample(item, plan.blueprint, 1, random.Random(0))
        size_wh = (sample.original_size[1], sample.original_size[0])
        if session.latent_cache is not None:
            pixels = np.ascontiguousarray(sample.pixels[:, ::-1]) if sample.flipped else sample.pixels
            variants = [pixels, np.ascontiguousarray(pixels[:, ::-1])] if item.subset.flip_aug else [pixels]
            for variant in variants:
                session.latent_cache.latents([variant], [item.path], [size_wh])
        if te_cache is not None:
            te_cache.outputs([sample.caption], [item.path])
    if offload and models.device.type == "cuda":
        if session.latent_cache is not None:
            models.vae.to("cpu")
        if te_cache is not None and not models.train_text_encoder:
            models.text_encoder.to("cpu")
            models.text_encoder_2.to("cpu")
        torch.cuda.empty_cache()
    return len(seen)
