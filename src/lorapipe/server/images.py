"""Base64 images in and out of the API, with a pixel cap checked before any pixel is decoded."""

from __future__ import annotations

import base64
import binascii
import io

from lorapipe.server.api_errors import ApiError as HTTPException


def decode_image(data: str, *, max_pixels: int, field: str = "image"):
    """Raw base64 or a `data:image/...;base64,` URI -> PIL image. URLs are never fetched (no SSRF).

    Anything that is not an image answers 422 naming `field` (A1111 answers 500 "Invalid encoded image"; a bad
    request is the client's to fix, so it gets a 4xx that says which field)."""
    from PIL import Image, UnidentifiedImageError

    if data.startswith(("http://", "https://")):
        raise HTTPException(status_code=422, detail=f"{field}: image URLs are not fetched; send the image as base64")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    invalid = f"{field}: not a decodable image; send a base64 PNG or JPEG"
    try:
        raw = base64.b64decode(data, validate=False)
        image = Image.open(io.BytesIO(raw))  # reads the header only
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        raise HTTPException(status_code=422, detail=invalid) from None
    width, height = image.size
    if width * height > max_pixels:
        raise HTTPException(status_code=422, detail=f"{field}: image is {width}x{height}; at most {max_pixels} pixels")
    try:
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError):
        raise HTTPException(status_code=422, detail=invalid) from None
    return image


def encode_png(png: bytes) -> str:
    """Raw base64 with no data-URI prefix (what A1111 returns and webuiapi decodes)."""
    return base64.b64encode(png).decode("ascii")
