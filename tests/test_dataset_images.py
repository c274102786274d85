"""Image robustness: every odd file is decoded correctly or reported with its reason, never a crash."""

import io

import numpy as np
import pytest
from PIL import Image

from lorapipe.dataset.images import decode_image, probe_image
from lorapipe.errors import DatasetError


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_exif_orientation_applied(tmp_path):
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, :40] = (255, 0, 0)  # left half red in the stored (landscape) image
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = _save(image, tmp_path / "rotated.jpg", exif=exif, quality=95)
    header = probe_image(path)
    assert header.stored_size == (80, 40) and header.size == (40, 80) and header.orientation == 6
    decoded = decode_image(path)
    assert decoded.size == (40, 80)
    top = np.asarray(decoded)[:10].mean(axis=(0, 1))
    assert top[0] > 200 and top[1] < 60  # the red half ends up on top after a 90 degree clockwise turn


def test_modes_convert_correctly(tmp_path):
    grey16 = Image.fromarray(np.full((8, 8), 32768, np.uint16))
    path16 = _save(grey16, tmp_path / "grey16.png")
    assert abs(int(np.asarray(decode_image(path16))[0, 0, 0]) - 128) <= 1  # rescaled, not clipped to 255

    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert np.asarray(decode_image(_save(rgba, tmp_path / "clear.png")))[0, 0].tolist() == [255, 255, 255]

    la = Image.new("LA", (8, 8), (0, 255))
    assert np.asarray(decode_image(_save(la, tmp_path / "la.png")))[0, 0].tolist() == [0, 0, 0]

    palette = Image.new("RGB", (8, 8), (0, 128, 255)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert np.asarray(decode_image(_save(palette, tmp_path / "p.png")))[0, 0].tolist() == [0, 128, 255]

    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red
    red = np.asarray(decode_image(_save(cmyk, tmp_path / "cmyk.jpg", quality=100)))[4, 4]
    assert red[0] > 230 and red[1] < 30 and red[2] < 30

    grey = Image.new("L", (8, 8), 77)
    assert np.asarray(decode_image(_save(grey, tmp_path / "l.bmp")))[0, 0].tolist() == [77, 77, 77]


def _reported_truncated(path) -> bool:
    try:
        return probe_image(path).truncated
    except DatasetError as exc:
        return "truncated" in str(exc)


def test_truncated_corrupt_animated_and_bombs(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, "PNG")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(buffer.getvalue()[:-30])
    assert _reported_truncated(truncated)

    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(jpeg, "JPEG")
    cut_jpeg = tmp_path / "cut.jpg"
    cut_jpeg.write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    assert _reported_truncated(cut_jpeg)

    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all")
    with pytest.raises(DatasetError, match="garbage.png: not a readable image"):
        probe_image(garbage)

    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0))]
    animated = tmp_path / "anim.webp"
    frames[0].save(animated, save_all=True, append_images=frames[1:], duration=100)
    assert probe_image(animated).animated
    assert decode_image(animated).size == (32, 32)

    gif = _save(Image.new("RGB", (32, 32)), tmp_path / "x.png", format="GIF")
    with pytest.raises(DatasetError, match="GIF images are not trained"):
        probe_image(gif)

    # A 20000 x 20000 PNG header (400 Mpx) is refused from the header alone, before any decoding.
    bomb = _save(Image.new("1", (20000, 20000)), tmp_path / "bomb.png")
    with pytest.raises(DatasetError, match="too large"):
        probe_image(bomb)
    with pytest.raises(DatasetError, match="too large"):
        decode_image(bomb)


def test_decode_with_min_side_reduces_jpegs_but_keeps_enough_pixels(tmp_path):
    from lorapipe.dataset.images import decode_image

    path = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1600), (10, 200, 30)).save(path, quality=90)
    assert decode_image(path, min_side=500).size == (1000, 800)  # 1/2 scale; 1/4 would be under 500 px
    assert decode_image(path, min_side=2000).size == (2000, 1600)  # never upscales, never drops below the ask
    assert decode_image(path).size == (2000, 1600)
