"""Training presets: plain Kohya TOML files, and how `dataset prepare` fills one in for a folder of photos.

A preset is an ordinary `kohya-sdxl-config.toml` (shipped ones live in `presets/`, or any file of the user's).
Its `max_train_steps` is the step budget; `plan_schedule` turns that budget into the folder's repeat count and
`max_train_epochs` for the number of photos, the two numbers sd-scripts actually counts steps from.
`render_config` rewrites only the keys prepare owns and keeps every other line and comment as written.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lorapipe.errors import ConfigError

PRESET_NAMES = ("subject", "face", "style")
DEFAULT_PRESET = "subject"
DEFAULT_STEP_BUDGET = 1600  # sd-scripts' own max_train_steps default, for a user preset without one
# Ten epochs: with save_every_n_epochs = 1 that is ten LoRA files to pick the best (least overfitted) one from.
TARGET_EPOCHS = 10
PROMPTS_NAME = "sample-prompts.txt"
_KEY_LINE = re.compile(r"^(\s*)([A-Za-z0-9_]+)(\s*=\s*)(.*)$")

# Preview prompts per preset ({subject} is "trigger class"); Kohya's prompt-file options after the text.
_PROMPTS = {
    "subject": (
        "photo of {subject}, on a wooden table by a window, natural light",
        "{subject} in a snowy forest, winter morning",
        "watercolor painting of {subject}",
    ),
    "face": (
        "portrait photo of {subject}, smiling, soft window light",
        "close-up of {subject} wearing a black turtleneck, studio background",
        "{subject} as an astronaut, cinematic lighting",
    ),
    "style": (
        "a lighthouse on a cliff at dusk, {subject} style",
        "a busy city street in the rain, {subject} style",
        "portrait of an old fisherman, {subject} style",
    ),
}
_NEGATIVE = "lowres, blurry, deformed, watermark, text"


@dataclass(frozen=True)
class Preset:
    """A Kohya TOML as written (`text`) and as parsed (`values`, sections flattened as sd-scripts does)."""

    name: str
    path: str
    text: str
    values: dict[str, Any]

    @property
    def step_budget(self) -> int:
        return int(self.values.get("max_train_steps") or DEFAULT_STEP_BUDGET)

    @property
    def batch_size(self) -> int:
        return int(self.values.get("train_batch_size") or 1)

    @property
    def resolution(self) -> tuple[int, int]:
        value = self.values.get("resolution", 1024)
        if isinstance(value, (list, tuple)):
            parts = [int(v) for v in value]
        else:
            parts = [int(v) for v in str(value).split(",")]
        return (parts[0], parts[-1])


def load_preset(name_or_path: str | Path) -> Preset:
    """A shipped preset by name (`subject`, `face`, `style`) or a user's Kohya TOML by path."""
    text_name = str(name_or_path)
    if text_name in PRESET_NAMES:
        text = resources.files("lorapipe.dataset").joinpath("presets", f"{text_name}.toml").read_text("utf-8")
        return Preset(text_name, f"preset {text_name}", text, _flatten(tomllib.loads(text)))
    path = Path(text_name).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"{text_name}: no such preset; use one of {', '.join(PRESET_NAMES)} or the path of a "
            "Kohya TOML (copy one from `lorapipe dataset presets`)"
        )
    try:
        text = path.read_text(encoding="utf-8")
        values = _flatten(tomllib.loads(text))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: preset is not UTF-8 text; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: preset is not valid TOML ({exc}); fix that line") from None
    if "datasets" in values or "general" in values:
        raise ConfigError(
            f"{path}: a dataset_config file ([[datasets]]) is not a training preset; pass a Kohya training TOML"
        )
    return Preset(path.stem, str(path), text, values)


def _flatten(document: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def plan_schedule(images: int, budget_steps: int, batch_size: int = 1) -> tuple[int, int]:
    """(repeats, epochs) so that images x repeats x epochs / batch_size lands near `budget_steps`.

    Repeats aim at TARGET_EPOCHS epochs; few photos get many repeats, hundreds get one repeat and fewer epochs.
    At least one repeat and one epoch, so a very large folder may exceed the budget (one pass over every photo)."""
    if images < 1:
        raise ValueError("plan_schedule needs at least one image")
    samples = budget_steps * batch_size
    repeats = max(1, round(samples / (images * TARGET_EPOCHS)))
    epochs = max(1, round(samples / (images * repeats)))
    return repeats, epochs


def toml_value(value: Any) -> str:
    """A TOML literal for a str/int/float/bool (JSON's string escapes are TOML's basic-string escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def _comment_of(rest: str) -> str:
    """The `#comment` after a TOML value on one line (a `#` inside a quoted string is part of the value)."""
    quote = None
    index = 0
    while index < len(rest):
        char = rest[index]
        if quote == '"' and char == "\\":
            index += 2  # an escaped character inside a basic string
            continue
        if quote and char == quote:
            quote = None
        elif not quote and char in "\"'":
            quote = char
        elif not quote and char == "#":
            return rest[index:]
        index += 1
    return ""


def render_config(preset: Preset, settings: dict[str, Any], *, drop: dict[str, str] | None = None) -> str:
    """The preset's text with `settings` written in place (comments kept) and `drop` keys commented out with a
    reason; settings the preset lacks follow the first dropped key (or end the file)."""
    drop = drop or {}
    pending = dict(settings)
    lines = []
    for line in preset.text.splitlines():
        match = _KEY_LINE.match(line)
        key = match.group(2) if match else None
        if key in drop:
            value = match.group(4)
            lines.append(f"#{key} = {value[: len(value) - len(_comment_of(value))].strip()} #{drop[key]}")
            lines += [f"{k} = {toml_value(v)} #[prepare]" for k, v in pending.items() if k not in preset.values]
            pending = {k: v for k, v in pending.items() if k in preset.values}
        elif key in pending:
            comment = _comment_of(match.group(4))
            lines.append(
                f"{match.group(1)}{key}{match.group(3)}{toml_value(pending.pop(key))}"
                + (f" {comment}" if comment else "")
            )
        else:
            lines.append(line)
    if pending:
        lines += ["", "# written by lorapipe dataset prepare"] + [f"{k} = {toml_value(v)}" for k, v in pending.items()]
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)  # a preset that renders into invalid TOML is a bug here, not the user's
    return text


def sample_prompts(preset: Preset, subject: str) -> str:
    """Kohya prompt-file lines for preview images at the preset's resolution, each naming `subject`."""
    width, height = preset.resolution
    prompts = _PROMPTS.get(preset.name, _PROMPTS["subject"])
    lines = ["# preview prompts: <prompt> --n <negative> --w <width> --h <height> --s <steps> --d <seed> --l <cfg>"]
    for seed, prompt in enumerate(prompts, start=1):
        lines.append(
            f"{prompt.format(subject=subject)} --n {_NEGATIVE} --w {width} --h {height} --s 28 --d {seed} --l 6"
        )
    return "\n".join(lines) + "\n"
