"""Our Kohya file loads into diffusers' StableDiffusionXLPipeline with every key attached and the same math."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from lora_fixtures import outputs, probe_inputs, randomize_lora, torch_single_thread  # noqa: F401

from lorapipe.lora.file import save_kohya_lora
from lorapipe.lora.network import attach_kohya_lora

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def pipeline_class():
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def load_with_warnings(pipe, path: Path) -> list[str]:
    """Run load_lora_weights with diffusers/peft warnings switched on and collected."""
    from diffusers.utils import logging as diffusers_logging

    records = _Records()
    loggers = [diffusers_logging.get_logger("diffusers"), logging.getLogger("peft")]
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_warning()
    for logger in loggers:
        logger.addHandler(records)
    try:
        pipe.load_lora_weights(str(path))
    finally:
        for logger in loggers:
            logger.removeHandler(records)
        diffusers_logging.set_verbosity(level)
    return records.messages


def key_problems(warnings: list[str]) -> list[str]:
    """Warnings about missing or unexpected keys (the only ones that mean a module did not attach)."""
    return [w for w in warnings if "missing keys" in w.lower() or "unexpected keys" in w.lower()]


def lora_layer_count(model) -> int:
    from peft.tuners.lora import LoraLayer

    return sum(isinstance(m, LoraLayer) for m in model.modules())


def generate(pipe) -> np.ndarray:
    image = pipe(
        "a photo of dwjz toy",
        num_inference_steps=2,
        height=64,
        width=64,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]
    return np.asarray(image)


def test_load_lora_weights_attaches_every_module_with_the_same_math(tiny_model_dir, tmp_path, pipeline_class):
    conv_dim = 2  # conv LoRA on: the superset of modules (plain LoRA is covered by the UNet-only test below)
    trainer_pipe = pipeline_class.from_pretrained(tiny_model_dir)
    models = {n: getattr(trainer_pipe, n) for n in ("unet", "text_encoder", "text_encoder_2")}
    network = attach_kohya_lora(
        *models.values(),
        network_dim=4,
        network_alpha=2.0,
        conv_dim=conv_dim,
        conv_alpha=1.0 if conv_dim else None,
        dropout=None,
        seed=0,
    )
    randomize_lora(network)
    probe = probe_inputs(models["unet"], models["text_encoder_2"])
    expected = outputs(models, probe)
    path = save_kohya_lora(
        tmp_path / "toy.safetensors", network.kohya_state_dict(torch.float32), {"ss_network_module": "networks.lora"}
    )

    pipe = pipeline_class.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    before_image = generate(pipe)
    warnings = load_with_warnings(pipe, path)

    assert not key_problems(warnings), warnings
    for part, count in network.num_modules.items():
        assert lora_layer_count(getattr(pipe, part)) == count, part
    got = outputs({n: getattr(pipe, n) for n in models}, probe)
    for part in expected:
        torch.testing.assert_close(got[part], expected[part], rtol=1e-4, atol=1e-4)
    assert np.abs(generate(pipe) - before_image).max() > 1e-3


def test_unet_only_file_loads_without_text_encoder_layers(tiny_model_dir, tmp_path, pipeline_class):
    pipe = pipeline_class.from_pretrained(tiny_model_dir)
    network = attach_kohya_lora(
        pipe.unet,
        pipe.text_encoder,
        pipe.text_encoder_2,
        network_dim=2,
        network_alpha=1.0,
        conv_dim=None,
        conv_alpha=None,
        dropout=None,
        train_text_encoder=False,
        seed=0,
    )
    path = save_kohya_lora(tmp_path / "unet.safetensors", network.kohya_state_dict(torch.float16), {})
    fresh = pipeline_class.from_pretrained(tiny_model_dir)
    warnings = load_with_warnings(fresh, path)
    assert not key_problems(warnings), warnings
    assert lora_layer_count(fresh.unet) == network.num_modules["unet"]
    assert lora_layer_count(fresh.text_encoder) == lora_layer_count(fresh.text_encoder_2) == 0
