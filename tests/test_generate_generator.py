"""The Generator on the tiny SDXL model: diffusers parity, LoRAs that change images, the fused set, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
from generate_fixtures import load_generator, tiny_lora_folder
from PIL import Image

from lorapipe.generate.generator import GenerationRequest

SMALL = {"steps": 3, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir, tmp_path_factory):
    return tiny_lora_folder(tmp_path_factory.mktemp("gen"), tiny_model_dir)


@pytest.fixture(scope="module")
def generator(tiny_model_dir, lora_dir):
    return load_generator(tiny_model_dir, lora_dir)


def _pixels(result, index=0):
    return np.asarray(result.images[index], dtype=np.int16)


def test_plain_prompt_matches_diffusers_pixel_for_pixel(generator):
    import torch

    result = generator.generate(
        GenerationRequest("a photo of dwjz toy", negative_prompt="blurry", seed=7, cfg_scale=5.0, **SMALL)
    )
    pipe = generator.pipe
    reference = pipe(
        "a photo of dwjz toy",
        negative_prompt="blurry",
        num_inference_steps=3,
        guidance_scale=5.0,
        width=64,
        height=64,
        generator=torch.Generator("cpu").manual_seed(7),
    ).images[0]
    assert np.array_equal(_pixels(result), np.asarray(reference, dtype=np.int16))


def test_lora_changes_the_image_and_is_restored_exactly(generator):
    base = generator.generate(GenerationRequest("a photo of dwjz toy", seed=3, **SMALL))
    with_lora = generator.generate(GenerationRequest("a photo of dwjz toy <lora:toy:1>", seed=3, **SMALL))
    assert np.abs(_pixels(base) - _pixels(with_lora)).mean() > 1.0
    assert 'Lora hashes: "toy: ' in with_lora.infotexts[0]
    assert with_lora.loras[0].entry.name == "toy"
    again = generator.generate(GenerationRequest("a photo of dwjz toy", seed=3, **SMALL))
    assert np.array_equal(_pixels(base), _pixels(again))  # original weights came back bit for bit


def test_unchanged_lora_set_stays_fused(generator):
    request = GenerationRequest("toy <lora:dwjz_toy:0.6> <lora:style:0.4>", seed=1, **SMALL)
    first = generator.generate(request)
    loads = generator.loras.loads
    second = generator.generate(GenerationRequest("other words <lora:toy:0.6> <lora:style:0.4>", seed=1, **SMALL))
    assert generator.loras.loads == loads  # same files and weights: nothing reloaded
    assert len(first.loras) == len(second.loras) == 2
    generator.generate(GenerationRequest("toy <lora:toy:0.3>", seed=1, **SMALL))
    assert generator.loras.loads == loads + 1


def test_te_and_unet_weights_apply_separately(generator):
    unet_only = generator.generate(GenerationRequest("a toy <lora:toy:te=0:unet=1>", seed=2, **SMALL))
    both = generator.generate(GenerationRequest("a toy <lora:toy:1>", seed=2, **SMALL))
    none = generator.generate(GenerationRequest("a toy <lora:toy:0>", seed=2, **SMALL))
    base = generator.generate(GenerationRequest("a toy", seed=2, **SMALL))
    assert not np.array_equal(_pixels(unet_only), _pixels(both))
    assert np.abs(_pixels(none) - _pixels(base)).max() <= 1


def test_unknown_and_path_like_lora_names_warn_and_generate(generator):
    result = generator.generate(GenerationRequest("a toy <lora:missing:1> <lora:../toy:1>", seed=4, **SMALL))
    assert len(result.images) == 1 and result.loras == ()
    assert result.warnings == ("Networks not found: missing, ../toy",)


def test_emphasis_and_long_prompts_change_conditioning(generator):
    plain = generator.generate(GenerationRequest("a red toy", seed=5, **SMALL))
    weighted = generator.generate(GenerationRequest("a (red:1.8) toy", seed=5, **SMALL))
    assert not np.array_equal(_pixels(plain), _pixels(weighted))
    long_prompt = ", ".join(["a red toy on a table"] * 20)
    long = generator.generate(GenerationRequest(long_prompt, negative_prompt="blurry", seed=5, **SMALL))
    assert long.images[0].size == (64, 64)


def test_seeds_batches_and_variation_seeds(generator):
    result = generator.generate(GenerationRequest("toy", seed=100, batch_size=2, n_iter=2, **SMALL))
    assert result.seeds == (100, 101, 102, 103) and len(result.images) == 4
    single = generator.generate(GenerationRequest("toy", seed=101, **SMALL))
    # Image i of a batch is seed + i (batched matmuls may differ from single ones in the last bit).
    assert np.abs(_pixels(result, 1) - _pixels(single)).max() <= 2
    assert np.abs(_pixels(result, 0) - _pixels(single)).mean() > 1.0
    varied = generator.generate(GenerationRequest("toy", seed=100, subseed=5, subseed_strength=0.5, **SMALL))
    assert "Variation seed: 5, Variation seed strength: 0.5" in varied.infotexts[0]
    assert not np.array_equal(_pixels(varied), _pixels(result))
    random_seed = generator.generate(GenerationRequest("toy", seed=-1, **SMALL))
    assert 0 <= random_seed.seeds[0] < 4294967294


def test_samplers_and_img2img(generator):
    ancestral = generator.generate(GenerationRequest("toy", seed=9, sampler_name="Euler a", **SMALL))
    dpm = generator.generate(GenerationRequest("toy", seed=9, sampler_name="DPM++ 2M Karras", **SMALL))
    assert "Sampler: Euler a, Schedule type: Automatic" in ancestral.infotexts[0]
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in dpm.infotexts[0]
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    edited = generator.generate(GenerationRequest("toy", seed=9, init_images=(init,), denoising_strength=0.5, **SMALL))
    assert edited.images[0].size == (64, 64) and "Denoising strength: 0.5" in edited.infotexts[0]


def test_interrupt_returns_what_it_has_and_cancel_raises(generator):
    from lorapipe.generate.control import GenerationCancelled, JobControl

    control = JobControl()
    control.interrupt()
    assert generator.generate(GenerationRequest("toy", seed=1, **SMALL), control).images == ()
    control = JobControl()
    control.cancel("client disconnected")
    with pytest.raises(GenerationCancelled, match="client disconnected"):
        generator.generate(GenerationRequest("toy", seed=1, **SMALL), control)


def test_bad_sizes_are_generation_errors(generator):
    from lorapipe.errors import GenerationError

    with pytest.raises(GenerationError, match="width"):
        generator.generate(GenerationRequest("toy", width=65, height=64, steps=1))


def test_cli_generate_writes_png_with_infotext(tiny_model_dir, lora_dir, tmp_path, capsys):
    from lorapipe.cli.main import main

    out = tmp_path / "out.png"
    code = main(
        [
            "generate",
            "a photo of dwjz toy <lora:toy:0.8> <lora:gone:1>",
            "--base-model",
            str(tiny_model_dir),
            "--lora-dir",
            str(lora_dir),
            "-o",
            str(out),
            "--steps",
            "2",
            "--seed",
            "11",
            "--width",
            "64",
            "--height",
            "64",
            "--sampler",
            "Euler",
            "--negative",
            "blurry",
        ]
    )
    assert code == 0
    text = Image.open(out).info["parameters"]
    assert text.startswith("a photo of dwjz toy <lora:toy:0.8> <lora:gone:1>\nNegative prompt: blurry\nSteps: 2")
    assert "Seed: 11" in text and 'Lora hashes: "toy: ' in text
    assert "lorapipe: warning: Networks not found: gone" in capsys.readouterr().err
