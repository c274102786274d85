"""Helpers shared by the LoRA tests: tiny seeded models and fixed inputs sized from the models' own configs."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import pytest


@pytest.fixture(autouse=False)
def torch_single_thread():
    """One intra-op thread while a LoRA test runs: on the shared 2-core machine tiny matmuls with several threads
    spin against other processes and run ~50x slower. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_models(seed: int = 0) -> dict[str, Any]:
    """Fresh copies of the tiny UNet and text encoders (random, seeded, eval mode); built once per seed."""
    import copy

    return copy.deepcopy(_pristine_models(seed))


@functools.lru_cache(maxsize=2)
def _pristine_models(seed: int) -> dict[str, Any]:
    from lorapipe.sdxl.factory import build_models

    models = build_models("tiny", seed=seed)
    models.pop("vae")  # LoRA never touches the VAE
    for model in models.values():
        model.eval()
    return models


@dataclass(frozen=True)
class ProbeInputs:
    """One fixed UNet call and one fixed token batch, to compare model outputs before/after a change."""

    latents: Any
    context: Any
    added: dict
    token_ids: Any


def probe_inputs(unet: Any, text_encoder_2: Any, seed: int = 0) -> ProbeInputs:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return ProbeInputs(
        latents=torch.randn(1, unet.config.in_channels, 8, 8, generator=gen),
        context=torch.randn(1, 77, unet.config.cross_attention_dim, generator=gen),
        added={
            "text_embeds": torch.randn(1, text_encoder_2.config.projection_dim, generator=gen),
            "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]),
        },
        token_ids=torch.randint(0, 49406, (1, 77), generator=gen),
    )


def outputs(models: dict[str, Any], probe: ProbeInputs) -> dict[str, Any]:
    """UNet noise prediction and both text encoders' outputs for the probe."""
    import torch

    with torch.no_grad():
        return {
            "unet": models["unet"](probe.latents, 10, probe.context, added_cond_kwargs=probe.added).sample,
            "text_encoder": models["text_encoder"](probe.token_ids).last_hidden_state,
            "text_encoder_2": models["text_encoder_2"](probe.token_ids).text_embeds,
        }


def randomize_lora(network: Any, std: float = 0.05, seed: int = 1) -> None:
    """Give every LoRA weight (up included) non-zero values so the network changes outputs."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in network.lora_parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * std)
