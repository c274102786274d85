"""Inpainting on the tiny SDXL model: only the masked area changes, the rest is the init image pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest
from generate_fixtures import load_generator
from PIL import Image

from lorapipe.errors import GenerationError
from lorapipe.generate.generator import GenerationRequest
from lorapipe.generate.inpaint import BLANK_MASK_WARNING, InpaintOptions, prepare_mask

SMALL = {"steps": 3, "width": 64, "height": 64, "seed": 3, "denoising_strength": 0.75}
BOX = (24, 24, 40, 40)  # the white square of the mask (x1, y1, x2, y2)
BLUR = 2
MARGIN = 3 * BLUR  # the Gaussian feather reaches ~2.5 sigma; beyond it the mask is exactly 0


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    return load_generator(tiny_model_dir, None)


def _init(size=(64, 64)) -> Image.Image:
    """A noisy picture: the VAE cannot round-trip it, so an untouched pixel proves it was pasted back."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _mask(size=(64, 64), box=BOX) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def _inside(box=BOX, shrink=MARGIN) -> tuple[slice, slice]:
    return slice(box[1] + shrink, box[3] - shrink), slice(box[0] + shrink, box[2] - shrink)


def _outside(shape, box=BOX, grow=MARGIN) -> np.ndarray:
    keep = np.ones(shape[:2], bool)
    keep[max(0, box[1] - grow) : box[3] + grow, max(0, box[0] - grow) : box[2] + grow] = False
    return keep


def _diff(result, init) -> np.ndarray:
    return np.abs(np.asarray(result, dtype=np.int16) - np.asarray(init, dtype=np.int16)).sum(-1)


def _inpaint(generator, init, **options):
    mask = options.pop("mask", None) or _mask(init.size)
    return generator.generate(
        GenerationRequest(
            "toy", init_images=(init,), **SMALL, inpaint=InpaintOptions(mask, blur_x=BLUR, blur_y=BLUR, **options)
        )
    )


def test_only_the_masked_area_changes(generator):
    init = _init()
    result = _inpaint(generator, init)
    diff = _diff(result.images[0], init)
    assert result.images[0].size == (64, 64)
    assert diff[_outside(diff.shape)].max() == 0  # beyond the feather: the init pixels, exactly
    assert diff[_inside()].mean() > 30  # inside: repainted
    assert "Denoising strength: 0.75" in result.infotexts[0] and "Mask blur: 2" in result.infotexts[0]
    assert "Inpaint area" not in result.infotexts[0] and "Masked content" not in result.infotexts[0]


def test_invert_swaps_which_region_changes(generator):
    init = _init()
    result = _inpaint(generator, init, invert=True)
    diff = _diff(result.images[0], init)
    assert diff[_inside(shrink=MARGIN + 1)].max() == 0  # the white square is now what is kept
    assert diff[_outside(diff.shape, grow=MARGIN + 1)].mean() > 30
    assert "Mask mode: Inpaint not masked, Mask blur: 2" in result.infotexts[0]


def test_only_masked_returns_the_init_size_with_the_outside_unchanged(generator):
    init = _init((96, 64))  # not the generation size: "Only masked" keeps the init image's size
    box = (60, 20, 76, 36)
    result = _inpaint(generator, init, mask=_mask(init.size, box), only_masked=True, only_masked_padding=8)
    diff = _diff(result.images[0], init)
    assert result.images[0].size == (96, 64)
    assert diff[_outside(diff.shape, box)].max() == 0
    assert diff[_inside(box)].mean() > 30
    assert "Inpaint area: Only masked, Masked area padding: 8" in result.infotexts[0]
    assert "Size: 64x64" in result.infotexts[0]


@pytest.mark.parametrize("content", ["fill", "latent noise", "latent nothing"])
def test_masked_content_changes_the_start_and_keeps_the_outside(generator, content):
    init = _init()
    original = _inpaint(generator, init)
    result = _inpaint(generator, init, masked_content=content)
    diff = _diff(result.images[0], init)
    assert diff[_outside(diff.shape)].max() == 0
    assert _diff(result.images[0], original.images[0])[_inside()].mean() > 5  # same seed, another start
    assert f"Masked content: {content}" in result.infotexts[0]


def test_a_blank_mask_returns_the_init_image_with_a_warning(generator):
    init = _init()
    result = _inpaint(generator, init, mask=Image.new("L", (64, 64), 0))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(init))
    assert BLANK_MASK_WARNING in result.warnings
    inverted_white = _inpaint(generator, init, mask=Image.new("L", (64, 64), 255), invert=True)
    assert BLANK_MASK_WARNING in inverted_white.warnings


def test_mask_of_another_size_is_scaled_to_the_picture(generator):
    init = _init()
    small = _mask((32, 32), tuple(v // 2 for v in BOX))  # the same square at half size
    result = _inpaint(generator, init, mask=small)
    diff = _diff(result.images[0], init)
    # A1111 blurs at the mask's own size, so the feather doubles with the scale.
    assert diff[_outside(diff.shape, grow=2 * MARGIN + 1)].max() == 0
    assert diff[_inside()].mean() > 30


def test_mask_preparation_follows_a1111():
    grey = Image.new("L", (16, 16), 100)
    assert prepare_mask(InpaintOptions(grey, blur_x=0, blur_y=0)).getextrema() == (0, 0)  # rounded at 128
    assert prepare_mask(InpaintOptions(grey, blur_x=0, blur_y=0, mask_round=False)).getextrema() == (100, 100)
    drawn = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    drawn.paste((0, 0, 0, 255), (4, 4, 8, 8))  # painted in black on transparency: the alpha is the mask
    assert prepare_mask(InpaintOptions(drawn, blur_x=0, blur_y=0)).getbbox() == (4, 4, 8, 8)
    wide = prepare_mask(InpaintOptions(_mask(), blur_x=4, blur_y=0))
    assert wide.getbbox()[1::2] == (BOX[1], BOX[3]) and wide.getbbox()[0] < BOX[0]  # blurred sideways only


def test_soft_mask_and_batches(generator):
    init = _init()
    result = generator.generate(
        GenerationRequest(
            "toy",
            init_images=(init,),
            batch_size=2,
            **SMALL,
            inpaint=InpaintOptions(_mask(), blur_x=BLUR, blur_y=BLUR, mask_round=False),
        )
    )
    assert len(result.images) == 2 and result.seeds == (3, 4)
    for image in result.images:
        diff = _diff(image, init)
        assert diff[_outside(diff.shape)].max() == 0 and diff[_inside()].mean() > 30
    assert not np.array_equal(np.asarray(result.images[0]), np.asarray(result.images[1]))


def test_bad_options_name_the_field(generator):
    with pytest.raises(GenerationError, match="^inpainting_fill:"):
        _inpaint(generator, _init(), masked_content="smudge")
    with pytest.raises(GenerationError, match="^mask:"):
        generator.generate(GenerationRequest("toy", **SMALL, inpaint=InpaintOptions(_mask())))
    with pytest.raises(GenerationError, match="^inpaint_full_res_padding:"):
        _inpaint(generator, _init(), only_masked_padding=-1)


def test_cli_inpaints_at_the_init_image_size(tiny_model_dir, tmp_path, capsys):
    from lorapipe.cli.main import main

    init, mask = _init((96, 64)), _mask((96, 64))
    init.save(tmp_path / "init.png")
    mask.save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    code = main(
        [
            "generate",
            "a toy",
            "--base-model",
            str(tiny_model_dir),
            "-o",
            str(out),
            "--steps",
            "3",
            "--seed",
            "3",
            "--init-image",
            str(tmp_path / "init.png"),
            "--mask",
            str(tmp_path / "mask.png"),
            "--mask-blur",
            str(BLUR),
            "--denoising-strength",
            "0.9",
        ]
    )
    assert code == 0
    with Image.open(out) as result:
        text = result.info["parameters"]
        pixels = np.asarray(result.convert("RGB"))
    assert pixels.shape == (64, 96, 3)  # the init image's size when --width/--height are not given
    original = np.asarray(init)
    outside = _outside(pixels.shape)
    assert np.array_equal(pixels[outside], original[outside])
    assert not np.array_equal(pixels[_inside()], original[_inside()])
    assert "Denoising strength: 0.9" in text and f"Mask blur: {BLUR}" in text
    assert main(["generate", "x", "--base-model", str(tiny_model_dir), "--mask", str(tmp_path / "mask.png")]) != 0
    assert "--mask: inpainting needs --init-image" in capsys.readouterr().err


def test_resize_modes_bring_the_init_image_to_size_as_a1111():
    from diffusers.image_processor import VaeImageProcessor

    from lorapipe.generate.resize import check_resize_mode, fit

    processor = VaeImageProcessor()
    wide = np.zeros((64, 128, 3), np.uint8)
    wide[:, :32] = (255, 0, 0)  # red left quarter, blue right quarter, green middle
    wide[:, 32:96] = (0, 255, 0)
    wide[:, 96:] = (0, 0, 255)
    image = Image.fromarray(wide)
    stretched = np.asarray(fit(image, 64, 64, 0, processor))
    cropped = np.asarray(fit(image, 64, 64, 1, processor))
    filled = np.asarray(fit(image, 64, 64, 2, processor))
    assert stretched[32, 2, 0] > 200 and stretched[32, 61, 2] > 200  # squeezed: red and blue at the sides
    assert cropped[32, 2, 1] > 200 and cropped[32, 61, 1] > 200  # centre crop: only green is left
    assert filled[32, 2, 0] > 200 and filled[32, 61, 2] > 200  # fitted inside ...
    assert filled.shape == (64, 64, 3) and filled[2, 32, 1] > 200  # ... with the band above filled from the edge
    with pytest.raises(GenerationError, match="resize_mode"):
        check_resize_mode(3)
