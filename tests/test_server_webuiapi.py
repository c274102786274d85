"""The real `webuiapi` client (mix1009/sdwebuiapi) against a running lorapipe server."""

from __future__ import annotations

import pytest
from generate_fixtures import RunningServer, load_generator, tiny_lora_folder

from lorapipe.server.app import create_app
from lorapipe.server.settings import ServerSettings

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    generator = load_generator(tiny_model_dir, tiny_lora_folder(tmp_path_factory.mktemp("wa"), tiny_model_dir))
    settings = ServerSettings(api_auth=(("user", "pa:ss"),))
    with RunningServer(create_app(settings, generator=generator)) as running:
        yield running


@pytest.fixture()
def api(server):
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port, username="user", password="pa:ss")


def test_txt2img_with_lora_tag(api):
    result = api.txt2img(
        prompt="a photo of dwjz toy <lora:toy:0.8>",
        negative_prompt="blurry",
        seed=1234,
        steps=2,
        width=64,
        height=64,
        cfg_scale=6,
        sampler_name="DPM++ 2M",
        scheduler="karras",
    )
    assert result.image.size == (64, 64)
    assert result.info["seed"] == 1234 and result.info["all_seeds"] == [1234]
    infotext = result.info["infotexts"][0]
    assert infotext.startswith("a photo of dwjz toy <lora:toy:0.8>\nNegative prompt: blurry\n")
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in infotext and 'Lora hashes: "toy: ' in infotext
    # webuiapi's own defaults: sampler "Euler a", scheduler "automatic" (lower case)
    default = api.txt2img(prompt="toy", steps=1, width=64, height=64)
    assert default.info["sampler_name"] == "Euler a"


def test_txt2img_hires_fix(api):
    result = api.txt2img(
        prompt="a toy",
        seed=5,
        steps=2,
        width=64,
        height=64,
        enable_hr=True,
        hr_scale=1.5,
        hr_upscaler=webuiapi.HiResUpscaler.Latent,
        denoising_strength=0.6,
        sampler_name="LMS",
    )
    assert result.image.size == (96, 96)
    infotext = result.info["infotexts"][0]
    assert "Sampler: LMS" in infotext and "Denoising strength: 0.6" in infotext
    assert "Hires upscale: 1.5" in infotext and "Hires upscaler: Latent" in infotext
    assert "Latent" in {mode["name"] for mode in api.get_latent_upscale_modes()}


def test_get_loras_and_models(api):
    loras = api.get_loras()
    assert {entry["name"] for entry in loras} == {"toy", "style"}
    assert {entry["alias"] for entry in loras} == {"dwjz_toy", "style"}
    models = api.get_sd_models()
    assert models and models[0]["title"].endswith(f"[{models[0]['hash']}]")
    api.util_set_model(models[0]["title"])
    assert api.util_get_current_model() == models[0]["title"]
    assert api.util_get_sampler_names() and "automatic" in api.util_get_scheduler_names()
    api.util_wait_for_ready(check_interval=0.1)


def test_png_info_round_trip(api):
    result = api.txt2img(prompt="round (trip:1.2), test", seed=77, steps=2, width=64, height=64)
    info = api.png_info(result.image)
    assert info.info == result.info["infotexts"][0]
    assert info.parameters["Prompt"] == "round (trip:1.2), test" and info.parameters["Seed"] == "77"


def test_wrong_credentials_are_refused(server):
    bad = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, username="user", password="nope")
    assert bad.get_sd_models()["detail"] == "Incorrect username or password"  # getters return the JSON as is
    with pytest.raises(RuntimeError):
        bad.txt2img(prompt="toy", steps=1, width=64, height=64)


def test_img2img_inpainting_with_mask_image(api):
    import numpy as np
    from PIL import Image

    init = Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 40, 40))
    result = api.img2img(
        images=[init],
        mask_image=mask,
        mask_blur=2,
        inpainting_fill=1,
        inpaint_full_res=False,
        denoising_strength=0.8,
        prompt="a toy",
        seed=21,
        steps=3,
        width=64,
        height=64,
    )
    diff = np.abs(np.asarray(result.image.convert("RGB"), np.int16) - np.asarray(init, np.int16)).sum(-1)
    outside = np.ones((64, 64), bool)
    outside[10:46, 10:46] = False
    assert diff[outside].max() == 0 and diff[22:34, 22:34].mean() > 30
    assert "Mask blur: 2" in result.info["infotexts"][0]
