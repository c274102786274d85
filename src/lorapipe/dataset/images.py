"""Reading training images safely: header probes for the check, careful decoding for training.

`probe_image` reads only the header and the last bytes of a file (enough for size, format, animation, EXIF
orientation and truncation of PNG/JPEG/WebP/BMP); `decode_image` fully decodes to RGB uint8 with EXIF orientation
applied, alpha composited on a solid background, and 16-bit/greyscale/CMYK/palette converted without clipping.
Every failure is a `DatasetError` naming the file, never a crash deep inside training.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lorapipe.errors import DatasetError

# Formats accepted by content (magic bytes), whatever the extension says. MPO is the JPEG many cameras write.
ACCEPTED_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "WEBP": ".webp", "BMP": ".bmp"}
_EXTENSION_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}
# Pillow's own limit (~179 Mpx); bigger images are refused as decompression bombs, not decoded.
MAX_PIXELS = 178_956_970
ALPHA_BACKGROUND = (255, 255, 255)
_EXIF_ORIENTATION_TAG = 0x0112
_TOO_LARGE = "image is too large (decompression bomb guard); resize it below 100 Mpx"
_UNREADABLE = "not a readable image (corrupt, or another format with an image extension)"
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}  # orientations that swap width and height


@dataclass(frozen=True)
class ImageHeader:
    """What the header says: stored size, size after EXIF orientation, format and mode."""

    format: str
    mode: str
    stored_size: tuple[int, int]
    size: tuple[int, int]  # (w, h) after EXIF orientation: what training sees
    orientation: int
    animated: bool
    truncated: bool


def _tail_is_complete(path: Path, image_format: str, file_size: int) -> bool:
    """Cheap truncation check from the file's end marker (or declared length) without decoding."""
    with path.open("rb") as handle:
        if image_format in ("JPEG", "MPO"):
            handle.seek(max(0, file_size - 64))
            return b"\xff\xd9" in handle.read()  # EOI marker (some cameras append a few padding bytes)
        if image_format == "PNG":
            handle.seek(max(0, file_size - 12))
            return handle.read()[4:8] == b"IEND"
        if image_format == "WEBP":
            header = handle.read(8)
            return int.from_bytes(header[4:8], "little") + 8 <= file_size
        if image_format == "BMP":
            header = handle.read(6)
            return int.from_bytes(header[2:6], "little") <= file_size
    return True


def register_phone_formats() -> None:
    """Teach Pillow HEIC/HEIF (iPhone photos) through pillow-heif; AVIF is native in Pillow >= 11.3."""
    from pillow_heif import register_heif_opener

    register_heif_opener()


def probe_image(path: Path) -> ImageHeader:
    """Read the header of `path`; raise DatasetError with the reason if it cannot be trained on."""
    header = read_image_header(path)
    if header.format not in ACCEPTED_FORMATS:
        raise DatasetError(
            f"{path}: {header.format} images are not trained; convert it to PNG or JPEG "
            "(`lorapipe dataset prepare` does)"
        )
    return header


def read_image_header(path: Path) -> ImageHeader:
    """Like `probe_image`, for any format Pillow opens (`dataset prepare` converts the ones training refuses)."""
    try:
        file_size = path.stat().st_size
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image_format = image.format or "unknown"
                stored = image.size
                animated = bool(getattr(image, "is_animated", False))
                orientation = 1
                if image_format in ("JPEG", "MPO", "WEBP", "PNG"):
                    orientation = int(image.getexif().get(_EXIF_ORIENTATION_TAG, 1) or 1)
                mode = image.mode
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DatasetError(f"{path}: {_TOO_LARGE}") from None
    except UnidentifiedImageError:
        raise DatasetError(f"{path}: {_UNREADABLE}") from None
    except OSError as exc:
        if "truncated" in str(exc).lower():
            raise DatasetError(f"{path}: file is truncated (incomplete download or copy); replace it") from None
        raise DatasetError(f"{path}: cannot read image header ({exc})") from None
    if stored[0] * stored[1] > MAX_PIXELS:
        raise DatasetError(f"{path}: image is too large ({stored[0]}x{stored[1]}); resize it below 100 Mpx")
    if stored[0] < 1 or stored[1] < 1:
        raise DatasetError(f"{path}: image has no pixels")
    size = stored[::-1] if orientation in _TRANSPOSED_ORIENTATIONS else stored
    truncated = not _tail_is_complete(path, image_format, file_size)
    return ImageHeader(image_format, mode, stored, (size[0], size[1]), orientation, animated, truncated)


def extension_matches(path: Path, header: ImageHeader) -> bool:
    expected = _EXTENSION_FORMATS.get(path.suffix.lower())
    return expected == header.format or (expected == "JPEG" and header.format == "MPO")


def _alpha_of(image: Image.Image) -> Image.Image | None:
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return image.convert("RGBA").getchannel("A")
    return None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB the way a person would expect to see it."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit greyscale: Pillow's convert("RGB") clips instead of rescaling; scale to 8 bits ourselves.
        values = np.asarray(image, dtype=np.uint32 if mode == "I" else np.uint16).astype(np.float64)
        peak = 65535.0 if mode != "I" or values.max() > 255 else 255.0
        grey = np.clip(np.round(values * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.max() <= 1.0 else 1.0
        grey = np.clip(np.round(values * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return image
    return image.convert("RGB")  # L, 1, CMYK (Pillow inverts Adobe CMYK JPEGs itself), YCbCr, LAB, HSV


def decode_image(path: Path, *, min_side: int | None = None) -> Image.Image:
    """Fully decode `path` to an RGB PIL image, EXIF orientation applied.

    `min_side` lets a JPEG decode at a reduced scale (1/2, 1/4, 1/8) whose shorter side is still at least that
    many pixels: a captioner that sees 384-768 px needs a fraction of a 12 MP photo's decoding work."""
    return decode_image_with_alpha(path, min_side=min_side)[0]


def decode_image_with_alpha(path: Path, *, min_side: int | None = None) -> tuple[Image.Image, Image.Image | None]:
    """(RGB image, its alpha channel as an "L" image or None when the file has no transparency)."""
    with _decoding(path) as image:
        if min_side and image.format in ("JPEG", "MPO") and min(image.size) > min_side:
            scale = min_side / min(image.size)
            image.draft("RGB", (round(image.width * scale), round(image.height * scale)))
        image.seek(0)  # animated files: the first frame
        image.load()
        oriented = ImageOps.exif_transpose(image)
        oriented = oriented if oriented is not None else image
        return _to_rgb(oriented), _alpha_of(oriented)


def verify_decodes(path: Path) -> None:
    """Decode all of `path`'s pixel data, cheaply: a JPEG at 1/8 scale (Pillow's draft mode skips the inverse DCT
    but still reads every entropy-coded block, so corrupt or cut data fails just as in a full decode)."""
    with _decoding(path) as image:
        if image.format in ("JPEG", "MPO"):
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()


@contextlib.contextmanager
def _decoding(path: Path) -> Iterator[Image.Image]:
    """Open `path` for decoding; every Pillow failure becomes a DatasetError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                yield image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DatasetError(f"{path}: {_TOO_LARGE}") from None
    except UnidentifiedImageError:
        raise DatasetError(f"{path}: {_UNREADABLE}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: image cannot be decoded ({exc}); re-export or remove it") from None
