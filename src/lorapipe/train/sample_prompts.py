"""Kohya `sample_prompts` files (.txt with `--n --w --h --s --d --l --ss`, .toml, .json) -> SamplePrompt values.

No torch here: the file is checked before any model loads.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from lorapipe.errors import ConfigError

DEFAULT_SIZE = 512  # sd-scripts' default, also for SDXL
DEFAULT_STEPS = 30
DEFAULT_SCALE = 7.5


@dataclass(frozen=True)
class SamplePrompt:
    """One preview image request."""

    prompt: str
    negative_prompt: str = ""
    width: int = DEFAULT_SIZE
    height: int = DEFAULT_SIZE
    steps: int = DEFAULT_STEPS
    scale: float = DEFAULT_SCALE
    seed: int | None = None
    sampler: str | None = None

    def normalised(self) -> SamplePrompt:
        """Sizes floored to multiples of 8 (min 64), steps clamped to 1..1000, as sd-scripts does."""
        return replace(
            self,
            width=max(64, self.width - self.width % 8),
            height=max(64, self.height - self.height % 8),
            steps=min(1000, max(1, self.steps)),
        )


_OPTION_KEYS = {
    "n": "negative_prompt",
    "w": "width",
    "h": "height",
    "s": "steps",
    "d": "seed",
    "l": "scale",
    "ss": "sampler",
}
_DICT_KEYS = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "width": "width",
    "height": "height",
    "sample_steps": "steps",
    "scale": "scale",
    "seed": "seed",
    "sample_sampler": "sampler",
}


def parse_prompt_line(line: str, where: str = "sample_prompts") -> SamplePrompt:
    """`a toy --n blurry --w 1024 --h 1024 --d 1 --s 20 --l 6` -> SamplePrompt (the separator is " --")."""
    pieces = line.split(" --")
    values: dict = {"prompt": pieces[0].strip()}
    for piece in pieces[1:]:
        match = re.match(r"^(ss|n|w|h|s|d|l|g|cn|ctr|rcfg|fs)\s+(.*)$", piece.strip(), flags=re.IGNORECASE)
        if not match:
            continue  # sd-scripts ignores unknown options
        key, raw = match.group(1).lower(), match.group(2).strip()
        if key not in _OPTION_KEYS:
            continue  # other-model options (--g, --cn, ...) do nothing for SDXL
        values[_OPTION_KEYS[key]] = _convert(_OPTION_KEYS[key], raw, where)
    return SamplePrompt(**values).normalised()


def _convert(field: str, raw, where: str):
    try:
        if field in ("width", "height", "steps", "seed"):
            return int(raw)
        if field == "scale":
            return float(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {field} {raw!r} is not a number") from exc
    return str(raw)


def _from_dict(entry: dict, where: str) -> SamplePrompt:
    values = {}
    for key, value in entry.items():
        if key in _DICT_KEYS:
            values[_DICT_KEYS[key]] = _convert(_DICT_KEYS[key], value, where)
    if "prompt" not in values:
        raise ConfigError(f"{where}: an entry has no 'prompt'")
    return SamplePrompt(**values).normalised()


def load_sample_prompts(path: Path) -> list[SamplePrompt]:
    """Read a prompt file; a missing file is a ConfigError naming the sample_prompts key."""
    path = Path(path)
    where = f"sample_prompts ({path})"
    if not path.is_file():
        raise ConfigError(f"{where}: file not found; fix the path or remove sample_prompts")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: not valid TOML ({exc})") from exc
        table = data.get("prompt", {})
        shared = {k: v for k, v in table.items() if k != "subset"}
        prompts = []
        for subset in table.get("subset", []):
            clash = set(shared) & set(subset)
            if clash:  # sd-scripts' keyword expansion raises on duplicates instead of overriding
                raise ConfigError(f"{where}: key(s) {', '.join(sorted(clash))} set both in [prompt] and a subset")
            prompts.append(_from_dict({**shared, **subset}, where))
        return prompts
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not valid JSON ({exc})") from exc
        if not isinstance(data, list):
            raise ConfigError(f"{where}: expected a JSON list of prompts")
        return [parse_prompt_line(e, where) if isinstance(e, str) else _from_dict(e, where) for e in data]
    lines = [ln.strip() for ln in text.splitlines()]
    return [parse_prompt_line(ln, where) for ln in lines if ln and not ln.startswith("#")]
