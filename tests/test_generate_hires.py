"""Hires fix (A1111 `enable_hr`) and the extra samplers on the tiny SDXL model."""

from __future__ import annotations

import numpy as np
import pytest
from generate_fixtures import load_generator, tiny_lora_folder

from lorapipe.errors import GenerationError
from lorapipe.generate.control import JobControl
from lorapipe.generate.generator import GenerationRequest
from lorapipe.generate.hires import HiresFix, hires_target
from lorapipe.generate.infotext import parse_infotext

SMALL = {"steps": 3, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def generator(tiny_model_dir, tmp_path_factory):
    return load_generator(tiny_model_dir, tiny_lora_folder(tmp_path_factory.mktemp("hires"), tiny_model_dir))


def _pixels(result, index=0):
    return np.asarray(result.images[index], dtype=np.int16)


def test_target_size_follows_a1111():
    assert hires_target(64, 64, HiresFix(scale=1.5)).width == 96
    odd = hires_target(64, 48, HiresFix(scale=1.3))  # 83x62 floored to whole latents
    assert (odd.width, odd.height) == (80, 56)
    keep_aspect = hires_target(64, 48, HiresFix(resize_x=128))
    assert (keep_aspect.width, keep_aspect.height) == (128, 96)
    boxed = hires_target(64, 48, HiresFix(resize_x=96, resize_y=96))  # cover 128x96, crop to the box
    assert (boxed.upscale_width, boxed.upscale_height, boxed.width, boxed.height) == (128, 96, 96, 96)
    assert hires_target(64, 64, HiresFix(scale=1.0)) is None  # A1111 turns hires off at the same size


def test_latent_hires_upscales_reports_fields_and_is_seeded(generator):
    request = GenerationRequest("a toy <lora:toy:0.5>", seed=21, hires=HiresFix(scale=1.5), **SMALL)
    control = JobControl()
    result = generator.generate(request, control)
    assert result.images[0].size == (96, 96)
    fields = parse_infotext(result.infotexts[0])
    assert fields["Size-1"] == "64" and fields["Denoising strength"] == "0.7"
    assert fields["Hires upscale"] == "1.5" and "Hires upscaler" not in fields  # None = default mode, unwritten
    text = result.infotexts[0]
    assert text.index("Denoising strength") < text.index("Hires upscale") < text.index("Lora hashes")
    assert control.snapshot().job_count == 2  # both passes count towards progress
    again = generator.generate(request)
    assert np.array_equal(_pixels(result), _pixels(again))
    plain = generator.generate(GenerationRequest("a toy <lora:toy:0.5>", seed=21, steps=3, width=96, height=96))
    assert np.abs(_pixels(result) - _pixels(plain)).mean() > 1.0  # the hires pass started from the first pass


def test_upscalers_steps_sampler_and_resize_reach_the_infotext(generator):
    images = {}
    for upscaler in ("Latent (nearest-exact)", "Latent (bicubic antialiased)", "Lanczos", "Nearest", "None"):
        hires = HiresFix(scale=1.5, upscaler=upscaler, second_pass_steps=4, denoising_strength=0.5)
        result = generator.generate(GenerationRequest("a toy", seed=3, hires=hires, **SMALL))
        fields = parse_infotext(result.infotexts[0])
        assert (fields["Hires upscaler"], fields["Hires steps"], fields["Denoising strength"]) == (upscaler, "4", "0.5")
        images[upscaler] = _pixels(result)
    assert not np.array_equal(images["Latent (nearest-exact)"], images["Lanczos"])
    resized = generator.generate(
        GenerationRequest(
            "a toy",
            seed=3,
            steps=3,
            width=64,
            height=48,
            hires=HiresFix(resize_x=96, resize_y=96, sampler_name="Euler a", prompt="a red toy"),
        )
    )
    assert resized.images[0].size == (96, 96)
    fields = parse_infotext(resized.infotexts[0])
    assert fields["Hires resize-1"] == "96" and fields["Hires sampler"] == "Euler a"
    assert fields["Hires prompt"] == "a red toy" and "Hires upscale" not in fields


def test_unknown_upscaler_and_img2img_hires_are_errors(generator):
    with pytest.raises(GenerationError, match="^hr_upscaler: could not find upscaler named ESRGAN_4x"):
        generator.generate(GenerationRequest("toy", hires=HiresFix(upscaler="ESRGAN_4x"), **SMALL))
    from PIL import Image

    with pytest.raises(GenerationError, match="^enable_hr"):
        generator.generate(
            GenerationRequest("toy", init_images=(Image.new("RGB", (64, 64)),), hires=HiresFix(), **SMALL)
        )


def test_interrupt_in_the_first_pass_returns_the_first_pass(generator):
    class InterruptAtFirstStep(JobControl):
        def on_step(self, step):
            super().on_step(step)
            self.interrupt()

    control = InterruptAtFirstStep()
    result = generator.generate(GenerationRequest("toy", seed=1, hires=HiresFix(scale=2), **SMALL), control)
    assert len(result.images) == 1 and result.images[0].size == (64, 64)  # decoded first-pass latents
    assert control.snapshot().job_no == 0  # the hires pass never began


@pytest.mark.parametrize("name", ["LMS", "k_lms", "DPM++ 3M SDE"])
def test_lms_and_3m_sde_generate(generator, name):
    result = generator.generate(GenerationRequest("toy", seed=4, sampler_name=name, **SMALL))
    assert result.images[0].size == (64, 64) and np.asarray(result.images[0]).std() > 0
    assert result.sampler_name in ("LMS", "DPM++ 3M SDE")


def test_samplers_without_a_diffusers_match_are_not_found(generator):
    for name in ("DPM fast", "DPM adaptive", "Restart", "DPM++ 2S a"):
        with pytest.raises(GenerationError, match="Sampler not found"):
            generator.generate(GenerationRequest("toy", sampler_name=name, **SMALL))


def test_cli_hires_fix(tiny_model_dir, tmp_path, capsys):
    from PIL import Image

    from lorapipe.cli.main import main

    out = tmp_path / "hr.png"
    args = [
        "generate",
        "a toy",
        "--base-model",
        str(tiny_model_dir),
        "-o",
        str(out),
        "--steps",
        "2",
        "--seed",
        "3",
        "--width",
        "64",
        "--height",
        "64",
        "--sampler",
        "LMS",
        "--hr-scale",
        "1.5",
        "--hr-upscaler",
        "Lanczos",
        "--denoising-strength",
        "0.6",
    ]
    assert main(args) == 0
    image = Image.open(out)
    fields = parse_infotext(image.info["parameters"])
    assert image.size == (96, 96) and fields["Sampler"] == "LMS" and fields["Hires upscaler"] == "Lanczos"
    assert fields["Denoising strength"] == "0.6" and fields["Hires upscale"] == "1.5"
    assert main([*args[:-4], "--hr-upscaler", "ESRGAN_4x"]) != 0
    assert "hr_upscaler: could not find upscaler named ESRGAN_4x" in capsys.readouterr().err
