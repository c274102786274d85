"""Inpainting through /sdapi/v1/img2img's A1111 mask fields, on the tiny model."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from generate_fixtures import load_generator
from PIL import Image

from lorapipe.server.app import create_app
from lorapipe.server.settings import ServerSettings

SMALL = {"steps": 3, "width": 64, "height": 64, "seed": 11, "denoising_strength": 0.75}
BOX = (20, 24, 40, 44)


@pytest.fixture(scope="module")
def client(tiny_model_dir):
    with TestClient(create_app(ServerSettings(), generator=load_generator(tiny_model_dir, None))) as client:
        yield client


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _init() -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def _mask(box=BOX) -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, box)
    return mask


def _post(client, **fields):
    body = {"init_images": [_b64(_init())], "mask": _b64(_mask()), **SMALL, **fields}
    return client.post("/sdapi/v1/img2img", json=body)


def _result(response) -> tuple[np.ndarray, dict]:
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))).convert("RGB")
    return np.abs(np.asarray(image, np.int16) - np.asarray(_init(), np.int16)).sum(-1), json.loads(
        response.json()["info"]
    )


def _outside(grow: int) -> np.ndarray:
    keep = np.ones((64, 64), bool)
    keep[BOX[1] - grow : BOX[3] + grow, BOX[0] - grow : BOX[2] + grow] = False
    return keep


def test_whole_picture_repaints_only_the_mask(client):
    diff, info = _result(_post(client, mask_blur=2, inpainting_fill=1, inpaint_full_res=False))
    assert diff[_outside(6)].max() == 0 and diff[30:38, 26:34].mean() > 30
    infotext = info["infotexts"][0]
    assert "Denoising strength: 0.75" in infotext and "Mask blur: 2" in infotext
    assert "Inpaint area" not in infotext and "Masked content" not in infotext
    echoed = _post(client, mask_blur=2, inpainting_fill=1, inpaint_full_res=False, steps=2).json()["parameters"]
    assert echoed["mask"] is None and echoed["init_images"] is None  # blanked unless include_init_images


def test_a1111_api_defaults_inpaint_only_masked_with_fill(client):
    diff, info = _result(_post(client))  # A1111's API: inpaint_full_res, padding 0, fill, blur 4
    assert diff[_outside(11)].max() == 0 and diff[30:38, 26:34].mean() > 30
    assert (
        "Mask blur: 4, Inpaint area: Only masked, Masked area padding: 0, Masked content: fill" in info["infotexts"][0]
    )


def test_invert_and_separate_blur_directions(client):
    diff, info = _result(
        _post(client, inpainting_mask_invert=1, mask_blur_x=3, mask_blur_y=1, inpaint_full_res=False, inpainting_fill=2)
    )
    assert diff[BOX[1] + 4 : BOX[3] - 4, BOX[0] + 8 : BOX[2] - 8].max() == 0 and diff[_outside(9)].mean() > 30
    infotext = info["infotexts"][0]
    assert "Mask mode: Inpaint not masked" in infotext and "Mask blur" not in infotext  # x != y: A1111 omits it
    assert "Masked content: latent noise" in infotext


def test_blank_mask_returns_the_init_image_with_a_comment(client):
    diff, info = _result(_post(client, mask=_b64(Image.new("L", (64, 64), 0))))
    assert diff.max() == 0
    assert "nothing to repaint" in info["comments"]


def test_bad_mask_fields_are_422_naming_the_field(client):
    for bad in ("not-an-image", base64.b64encode(b"GIF89a broken").decode()):
        response = _post(client, mask=bad)
        assert response.status_code == 422 and response.json()["detail"].startswith("mask:"), response.text
    fill = _post(client, inpainting_fill=4)
    assert fill.status_code == 422 and fill.json()["detail"][0]["loc"] == ["body", "inpainting_fill"]
    blur = _post(client, mask_blur=-1)
    assert blur.status_code == 422 and blur.json()["detail"][0]["loc"] == ["body", "mask_blur"]
    latent = _post(client, latent_mask=_b64(_mask()))
    assert latent.status_code == 422 and latent.json()["detail"].startswith("latent_mask:")
    assert _post(client, steps=2).status_code == 200  # the worker is fine afterwards
