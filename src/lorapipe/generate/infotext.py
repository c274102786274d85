"""A1111 infotext: the `parameters` PNG chunk, written and parsed the way A1111 v1.10 does (no torch).

Layout: the prompt (tags kept), `Negative prompt: ...` when non-empty, then `Key: value` pairs in A1111's fixed
order; values holding `,`, `:` or a newline are JSON-quoted (modules/infotext_utils.py `quote`).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping

from lorapipe import __version__

VERSION_TEXT = f"lorapipe-v{__version__}"

# A1111 create_infotext order (v1.10), restricted to the keys lorapipe can produce.
_KEY_ORDER = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Seed",
    "Size",
    "Model hash",
    "Model",
    "Variation seed",
    "Variation seed strength",
    "Denoising strength",
    "RNG",
)
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")
# Defaults A1111's parse_generation_parameters fills in for keys an infotext leaves out.
_PARSE_DEFAULTS = {"Clip skip": "1", "Schedule type": "Automatic", "RNG": "GPU"}


def quote(value: object) -> str:
    """A1111 `quote`: JSON-quote a value whose text has a comma, colon or newline."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def create_infotext(
    prompt: str, negative_prompt: str, params: Mapping[str, object], extra: Mapping[str, object] = ()
) -> str:
    """Build one image's infotext. `params` uses A1111 key names; None values are left out."""
    # An extra param with a fixed slot (hires fix's `Denoising strength`) keeps that slot, as in A1111.
    merged = {**params, **{k: v for k, v in dict(extra).items() if v is not None}}
    ordered = {key: merged[key] for key in _KEY_ORDER if key in merged}
    ordered.update({k: v for k, v in params.items() if k not in ordered})
    ordered.update({k: v for k, v in merged.items() if k not in ordered})
    ordered["Version"] = VERSION_TEXT
    pairs = ", ".join(
        key if value == key else f"{key}: {quote(value)}" for key, value in ordered.items() if value is not None
    )
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{pairs}".strip()


def lora_hashes_value(pairs: list[tuple[str, str]]) -> str | None:
    """`Lora hashes` value: "<name as mentioned, minus ':' and ','>: <12-hex>" joined by ", "."""
    if not pairs:
        return None
    return ", ".join(f"{name.replace(':', '').replace(',', '')}: {short}" for name, short in pairs)


def parse_infotext(text: str) -> dict[str, str]:
    """A1111 `parse_generation_parameters`: Prompt, Negative prompt and every `Key: value` (sizes split -1/-2)."""
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    result: dict[str, str] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _PARAM.findall(last):
        value = unquote(value.strip())
        size = _IMAGE_SIZE.match(value)
        if size:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        else:
            result[key] = value
    for key, default in _PARSE_DEFAULTS.items():
        result.setdefault(key, default)
    return result


def png_bytes(image, infotext: str | None) -> bytes:
    """Encode a PIL image as PNG with the infotext in the `parameters` tEXt chunk."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if infotext:
        info.add_text("parameters", infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_infotext(image) -> tuple[str | None, dict[str, str]]:
    """(infotext, other text items) of an opened PIL image: the `parameters` chunk or EXIF UserComment."""
    items = {k: v for k, v in (image.info or {}).items() if isinstance(v, str)}
    text = items.pop("parameters", None)
    if text is None:
        text = _exif_user_comment(image)
    for technical in ("jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "icc_profile"):
        items.pop(technical, None)
    return text, items


def _exif_user_comment(image) -> str | None:
    try:
        exif = image.getexif().get_ifd(0x8769)
    except Exception:  # noqa: BLE001 - a broken EXIF block just means no infotext
        return None
    raw = exif.get(0x9286)
    if isinstance(raw, bytes):
        body = raw[8:] if raw[:8] in (b"UNICODE\x00", b"ASCII\x00\x00\x00") else raw
        for encoding in ("utf-16-be", "utf-8") if raw.startswith(b"UNICODE") else ("utf-8",):
            try:
                return body.decode(encoding).strip("\x00")
            except UnicodeDecodeError:
                continue
    return raw if isinstance(raw, str) else None
