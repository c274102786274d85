"""AUTOMATIC1111 prompt syntax, parsed without torch: `<lora:...>` tags, `(word:1.2)` / `[word]` emphasis, BREAK.

The rules are A1111's (modules/extra_networks.py, modules/prompt_parser.py), re-implemented here because the
maintained alternative (compel) speaks a different syntax (`word++`, `(word)1.2`) that A1111 users do not write.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# `<TYPE:ARGS>`: TYPE a run of word characters, ARGS anything up to '>' (A1111 extra_networks.re_extra_net).
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_LORA_TYPES = ("lora", "lyco")

# One token of the attention grammar: escapes, brackets, an explicit ":weight)", plain text, a stray ':'.
_ATTENTION = re.compile(
    r"""
    \\\( | \\\) | \\\[ | \\\] | \\\\ | \\
    | \( | \[
    | :\s*([+-]?[.\d]+)\s*\)
    | \) | \]
    | [^\\()\[\]:]+
    | :
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK_MARK = -1.0  # the weight A1111 gives a BREAK fragment


@dataclass(frozen=True)
class LoraTag:
    """One `<lora:name:te:unet>` tag: the name as written and the two multipliers."""

    name: str
    te_weight: float
    unet_weight: float


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt with its extra-network tags taken out: `text` goes to the encoder, `loras` to the LoRA set."""

    text: str
    loras: tuple[LoraTag, ...]
    other_tags: tuple[str, ...]  # tags of types we do not handle (hypernet, ...), removed like A1111 does


def parse_extra_networks(prompt: str) -> ParsedPrompt:
    """Remove every `<type:args>` tag; keep `lora`/`lyco` ones as LoraTags (A1111 `parse_prompt`)."""
    loras: list[LoraTag] = []
    others: list[str] = []

    def take(match: re.Match[str]) -> str:
        kind, args = match.group(1), match.group(2)
        if kind in _LORA_TYPES:
            tag = _lora_tag(args)
            if tag is not None:
                loras.append(tag)
        else:
            others.append(match.group(0))
        return ""

    text = _EXTRA_NETWORK.sub(take, prompt)
    return ParsedPrompt(text=text, loras=tuple(loras), other_tags=tuple(others))


def _lora_tag(args: str) -> LoraTag | None:
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in args.split(":"):
        key, eq, value = item.partition("=")
        if eq:
            named[key.strip()] = value.strip()
        else:
            positional.append(item.strip())
    if not positional or not positional[0]:
        return None
    name = positional[0]
    te = _number(named.get("te", positional[1] if len(positional) > 1 else None), 1.0)
    unet = _number(named.get("unet", positional[2] if len(positional) > 2 else None), te)
    return LoraTag(name=name, te_weight=te, unet_weight=unet)


def _number(text: str | None, default: float) -> float:
    if text is None or text == "":
        return default
    try:
        return float(text)
    except ValueError:
        return default


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) fragments as A1111's `parse_prompt_attention` does.

    `(a)` x1.1, `[a]` /1.1, `(a:1.3)` x1.3, `\\(` literal; unbalanced brackets close at the end; BREAK becomes a
    ("BREAK", -1) fragment; neighbours with equal weights merge.
    """
    fragments: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            fragment[1] *= factor

    for match in _ATTENTION.finditer(text):
        piece, weight = match.group(0), match.group(1)
        if piece.startswith("\\"):
            fragments.append([piece[1:], 1.0])
        elif piece == "(":
            round_open.append(len(fragments))
        elif piece == "[":
            square_open.append(len(fragments))
        elif weight is not None and round_open:
            multiply_from(round_open.pop(), float(weight))
        elif piece == ")" and round_open:
            multiply_from(round_open.pop(), ROUND_MULTIPLIER)
        elif piece == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for index, part in enumerate(_BREAK.split(piece)):
                if index > 0:
                    fragments.append(["BREAK", BREAK_MARK])
                fragments.append([part, 1.0])
    for start in round_open:
        multiply_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply_from(start, SQUARE_MULTIPLIER)
    if not fragments:
        fragments = [["", 1.0]]
    merged: list[list] = [fragments[0]]
    for fragment in fragments[1:]:
        if fragment[1] == merged[-1][1]:
            merged[-1][0] += fragment[0]
        else:
            merged.append(fragment)
    return [(t, float(w)) for t, w in merged]
