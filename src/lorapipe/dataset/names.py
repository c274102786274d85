"""File and folder names that every tool can handle, and paths that can always be printed.

Phone exports and old disks produce names with newlines or bytes that are not UTF-8 (Python keeps those as
surrogate escapes). Kohya, TOML and S3 keys all need plain UTF-8 text, so `dataset prepare` writes safe names;
messages show the original path with the odd bytes escaped, so printing it never fails.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

_UNSAFE_RUN = re.compile(r"[\x00-\x1f\x7f/\\]+")


def printable(path: Path | str) -> str:
    """`path` as text that any terminal can print: non-UTF-8 bytes as \\xNN, control characters escaped."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(
        char if char.isprintable() or char == " " else char.encode("unicode_escape").decode("ascii") for char in text
    )


def safe_stem(stem: str) -> str:
    """`stem` with control characters and undecodable bytes replaced by "_" (NFC-normalized); never empty."""
    text = os.fsencode(stem).decode("utf-8", "replace").replace("\ufffd", "_")
    text = _UNSAFE_RUN.sub("_", unicodedata.normalize("NFC", text))
    text = "".join(char if char.isprintable() else "_" for char in text).strip(" .")
    return text or "photo"
