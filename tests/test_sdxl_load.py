"""Every base-model form loads; anything that is not SDXL fails with one line naming it."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from lorapipe.errors import ModelLoadError
from lorapipe.sdxl.load import load_sdxl_pipeline, resolve_base_model
from lorapipe.sdxl.single_file import write_single_file


def _image(pipe, seed=0):
    out = pipe(
        "a photo of dwjz toy",
        num_inference_steps=2,
        width=64,
        height=64,
        output_type="np",
        generator=torch.Generator().manual_seed(seed),
    )
    return out.images[0]


@pytest.fixture(scope="module")
def tiny_pipe(tiny_model_dir):
    return load_sdxl_pipeline(str(tiny_model_dir))


def test_diffusers_folder_loads(tiny_model_dir, tiny_pipe):
    assert resolve_base_model(str(tiny_model_dir)).kind == "diffusers"
    image = _image(tiny_pipe)
    # Latents are 1/8 of the pixels, as in SDXL: a 64 px request comes back as 64 px.
    assert image.shape == (64, 64, 3)


def test_single_file_round_trip(tmp_path, tiny_pipe):
    path = write_single_file(tiny_pipe, tmp_path / "tiny-sdxl.safetensors")
    source = resolve_base_model(str(path))
    assert source.kind == "single_file" and source.configs is not None
    loaded = load_sdxl_pipeline(str(path))
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        expected, actual = getattr(tiny_pipe, part).state_dict(), getattr(loaded, part).state_dict()
        assert expected.keys() == actual.keys(), part
        for key in expected:
            assert torch.equal(expected[key], actual[key]), f"{part}.{key}"
    np.testing.assert_allclose(_image(tiny_pipe), _image(loaded), atol=1e-4)


def test_single_file_uses_original_sgm_names(tmp_path, tiny_pipe):
    from lorapipe.safetensors_header import read_header

    names = set(read_header(write_single_file(tiny_pipe, tmp_path / "m.safetensors")).tensors)
    for expected in (
        "model.diffusion_model.input_blocks.4.1.proj_in.weight",
        "model.diffusion_model.middle_block.1.proj_out.weight",
        "model.diffusion_model.output_blocks.2.2.conv.weight",
        "first_stage_model.decoder.up.0.block.0.conv1.weight",
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
        "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
        "conditioner.embedders.1.model.text_projection",
    ):
        assert expected in names, expected


def test_folder_that_is_not_sdxl(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ModelLoadError, match="not SDXL"):
        resolve_base_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        resolve_base_model(str(tmp_path.parent))


def test_files_that_are_not_sdxl_checkpoints(tmp_path):
    from safetensors.torch import save_file

    lora_like = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(lora_like))
    with pytest.raises(ModelLoadError, match="not an SDXL base checkpoint"):
        resolve_base_model(str(lora_like))
    garbage = tmp_path / "broken.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelLoadError, match="not a readable .safetensors"):
        resolve_base_model(str(garbage))
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="pickle"):
        resolve_base_model(str(pickle))


def test_hub_id_offline_and_missing_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="hub access is off"):
        resolve_base_model("stabilityai/stable-diffusion-xl-base-1.0")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert resolve_base_model("stabilityai/stable-diffusion-xl-base-1.0").kind == "hub"
    with pytest.raises(ModelLoadError, match="no such file"):
        resolve_base_model("./missing/model")


def test_cli_reports_bad_model_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lorapipe", "model", "info", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path) in lines[0] and "Traceback" not in result.stderr


def test_random_spec_builds_the_preset_in_memory(tiny_model_dir):
    """random:<preset> is the same seeded architecture `model make-tiny` writes, built where asked, no files."""
    assert resolve_base_model("random:tiny").kind == "random"
    assert resolve_base_model("random:full").name == "random:full"
    with pytest.raises(ModelLoadError, match="unknown preset 'huge'; use random:tiny or random:full"):
        resolve_base_model("random:huge")
    built = load_sdxl_pipeline("random:tiny", random_dtype=torch.bfloat16)
    assert built.unet.dtype == torch.bfloat16 and built.tokenizer_2.pad_token == "!"
    written = load_sdxl_pipeline(str(tiny_model_dir))
    fresh = load_sdxl_pipeline("random:tiny")
    for name in ("unet", "text_encoder_2"):
        theirs = getattr(written, name).state_dict()
        assert all(torch.equal(t, theirs[k]) for k, t in getattr(fresh, name).state_dict().items())
