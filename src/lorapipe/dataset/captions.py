"""Captions as sd-scripts reads and transforms them.

Reading (`DreamBoothDataset.read_caption`): `<image stem><caption_extension>`, or for face-crop names
(`name_cx_cy_w_h.ext`) the same name without the last four pieces; UTF-8; first line only (all lines with
enable_wildcard). Per-sample processing (`BaseDataset.process_caption`): prefix/suffix, caption dropout, wildcards,
keep_tokens / keep_tokens_separator, shuffle, tag dropout, secondary separator — in that order.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from lorapipe.dataset.blueprint import SubsetSpec
from lorapipe.errors import DatasetError

# Caption extensions people actually use; a missing caption is compared against these to find the real ones.
KNOWN_CAPTION_EXTENSIONS = (".txt", ".caption", ".cap", ".tags")
_WILDCARD_RE = re.compile(r"(?<!\{)\{([^{}]+)\}(?!\})")


@dataclass(frozen=True)
class CaptionFile:
    """The caption text sd-scripts would use (`None` when there is no file), and how many lines the file had."""

    path: Path | None
    text: str | None
    line_count: int


def caption_candidates(image_path: Path, extension: str) -> list[Path]:
    candidates = [image_path.with_name(image_path.stem + extension)]
    pieces = image_path.stem.split("_")
    if len(pieces) >= 5:  # face-crop naming: base_cx_cy_w_h.ext shares base.caption
        candidates.append(image_path.with_name("_".join(pieces[:-4]) + extension))
    return candidates


def read_caption(image_path: Path, extension: str, *, enable_wildcard: bool = False) -> CaptionFile:
    """Read the caption file of `image_path`; DatasetError for undecodable or empty files, as sd-scripts refuses."""
    for candidate in caption_candidates(image_path, extension):
        if not candidate.is_file():
            continue
        try:
            raw = candidate.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError:
            raise DatasetError(f"{candidate}: caption is not UTF-8 text; re-save it as UTF-8") from None
        lines = [line.strip() for line in raw.splitlines() if line.strip()]
        if not lines:
            raise DatasetError(f"{candidate}: caption file is empty; write a caption or delete the file")
        text = "\n".join(lines) if enable_wildcard else lines[0]
        return CaptionFile(candidate, text, len(lines))
    return CaptionFile(None, None, 0)


def other_caption_extensions(image_path: Path, configured: str) -> list[str]:
    """Caption extensions that exist for this image although they are not the configured one."""
    found = []
    for extension in KNOWN_CAPTION_EXTENSIONS:
        if extension != configured and image_path.with_name(image_path.stem + extension).is_file():
            found.append(extension)
    return found


def _expand_wildcards(caption: str, rng: random.Random) -> str:
    line = rng.choice(caption.split("\n"))
    line = _WILDCARD_RE.sub(lambda m: rng.choice(m.group(1).split("|")), line)
    return line.replace("{{", "{").replace("}}", "}")


def _warmup_steps(subset: SubsetSpec, total_steps: int | None) -> float:
    """token_warmup_step in steps: a value below 1 is a fraction of all steps (sd-scripts)."""
    value = subset.token_warmup_step
    if 0 < value < 1:
        return int(value * total_steps) if total_steps else 0
    return value


def _split_tags(text: str, separator: str) -> list[str]:
    return [t.strip() for t in text.split(separator) if t.strip()]


def process_caption(
    caption: str,
    subset: SubsetSpec,
    epoch: int,
    rng: random.Random,
    *,
    step: int | None = None,
    total_steps: int | None = None,
) -> str:
    """The caption one sample sees in `epoch` (1-based, as sd-scripts counts), drawn with `rng`.

    `step` (optimizer steps done before this batch) and `total_steps` drive token warm-up; without them (sample
    images, validation) every tag is used."""
    if subset.caption_prefix:
        caption = subset.caption_prefix + " " + caption
    if subset.caption_suffix:
        caption = caption + " " + subset.caption_suffix
    dropped = subset.caption_dropout_rate > 0 and rng.random() < subset.caption_dropout_rate
    every = subset.caption_dropout_every_n_epochs
    if dropped or (every > 0 and epoch % every == 0):
        return ""
    if subset.enable_wildcard:
        caption = _expand_wildcards(caption, rng)
    warmup = _warmup_steps(subset, total_steps) if step is not None else 0
    if subset.shuffle_caption or subset.caption_tag_dropout_rate > 0 or warmup:
        separator = subset.caption_separator
        fixed: list[str] = []
        suffix: list[str] = []
        keep_sep = subset.keep_tokens_separator
        if keep_sep and keep_sep in caption:
            fixed_part, flex_part = caption.split(keep_sep, 1)
            if keep_sep in flex_part:
                flex_part, suffix_part = flex_part.split(keep_sep, 1)
                suffix = _split_tags(suffix_part, separator)
            fixed = _split_tags(fixed_part, separator)
            flex = _split_tags(flex_part, separator)
        else:
            flex = [t.strip() for t in caption.strip().split(separator)]
            if subset.keep_tokens > 0:
                fixed, flex = flex[: subset.keep_tokens], flex[subset.keep_tokens :]
        if warmup and step < warmup:
            # sd-scripts' token warm-up: the first tags only, one more every so often, all by step `warmup`.
            flex = flex[: math.floor(step * (len(flex) - subset.token_warmup_min) / warmup) + subset.token_warmup_min]
        if subset.shuffle_caption:
            rng.shuffle(flex)
        if subset.caption_tag_dropout_rate > 0:
            flex = [t for t in flex if rng.random() >= subset.caption_tag_dropout_rate]
        caption = ", ".join(fixed + flex + suffix)
    if subset.secondary_separator:
        caption = caption.replace(subset.secondary_separator, subset.caption_separator)
    return caption
