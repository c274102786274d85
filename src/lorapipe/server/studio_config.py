"""The studio's training settings (steps, rank, learning rate, checkpoints) written into a Kohya TOML.

The page's few settings become lines of the run's TOML, not hidden overrides: the "advanced" box shows exactly
the file the trainer reads, and a run started from the page is reproducible with `lorapipe train --config`.
Lines are rewritten in place with `dataset prepare`'s own TOML editor, so comments survive.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from lorapipe.errors import ConfigError
from lorapipe.file_names import DATASET_CONFIG_NAME
from lorapipe.server.studio_settings import StudioSettings

# Epoch-based keys that would override or fight a step count (sd-scripts: max_train_epochs wins over steps).
_EPOCH_KEYS = ("max_train_epochs", "save_every_n_epochs", "sample_every_n_epochs")


@dataclass(frozen=True)
class TrainSettings:
    """The few settings the page offers (None = the config's own value)."""

    steps: int | None = None
    rank: int | None = None
    learning_rate: float | None = None
    checkpoints: int = 4  # LoRA files (each with its sample images) across the run, for the page to compare

    def values(self, keys: set[str]) -> tuple[dict[str, object], dict[str, str]]:
        """(keys to write, keys to comment out with the reason) for a TOML that sets `keys`."""
        values: dict[str, object] = {}
        drop: dict[str, str] = {}
        if self.steps is not None:
            every = max(1, self.steps // max(1, self.checkpoints))
            values.update(max_train_steps=self.steps, save_every_n_steps=every, sample_every_n_steps=every)
            drop = {
                key: f"the studio trains {self.steps} steps with a checkpoint every {every}"
                for key in _EPOCH_KEYS
                if key in keys
            }
        if self.rank is not None:
            values["network_dim"] = self.rank
        if self.learning_rate is not None:
            values["learning_rate"] = self.learning_rate
            if "unet_lr" in keys:  # sd-scripts: unet_lr wins over learning_rate for the UNet
                values["unet_lr"] = self.learning_rate
        return values, drop


def toml_values(text: str, where: str) -> dict[str, object]:
    """A training TOML's values, sections flattened as sd-scripts reads them; ConfigError if not TOML."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}; fix the line it names") from None
    flat: dict[str, object] = {}
    for key, value in data.items():
        flat.update(value if isinstance(value, dict) else {key: value})
    return flat


def apply_settings(text: str, settings: TrainSettings, where: str) -> str:
    """`text` with the settings written in (in place, comments kept); ConfigError naming `where` if not TOML."""
    from lorapipe.dataset.preset import Preset, render_config

    current = toml_values(text, where)
    values, drop = settings.values(set(current))
    if not values and not drop:
        return text
    return render_config(Preset(name="studio", path=where, text=text, values=current), values, drop=drop)


def run_config_text(dataset_dir: Path, config_toml: str | None, settings: TrainSettings) -> str:
    """The TOML a run trains with: `config_toml`, else the prepared dataset's own, with `settings` written in."""
    if config_toml is not None:
        return apply_settings(config_toml, settings, "config_toml")
    text = (dataset_dir / DATASET_CONFIG_NAME).read_text(encoding="utf-8")
    return apply_settings(text, settings, DATASET_CONFIG_NAME)


def preset_choices(settings: StudioSettings) -> dict[str, str]:
    """Preset name -> what `dataset prepare` is given: the shipped names, then the server's own TOML files
    (`--studio-preset FILE`, named by file stem). The page picks a name; it never sends a path."""
    from lorapipe.dataset.preset import PRESET_NAMES

    choices = {name: name for name in PRESET_NAMES}
    for path in settings.presets:
        choices[Path(path).stem] = str(Path(path).expanduser().resolve())
    return choices
