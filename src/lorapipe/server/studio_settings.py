"""The studio's settings (photos in, LoRA out, images out): where its data lives, upload caps, the busy policy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lorapipe.errors import ConfigError

# What a generation request meets while a training run holds the device the generator uses, in the words both
# pages show (`GET /studio/api/device`).
BUSY_EFFECTS = {
    "refuse": "image generation is refused (503) until it finishes",
    "wait": "image generation waits until it finishes",
    "share": "image generation shares it and may be slower",
}
BUSY_POLICIES = tuple(BUSY_EFFECTS)


@dataclass(frozen=True)
class StudioSettings:
    """`home`: the pipeline home (run database, run folders; the studio keeps its datasets under `studio/`);
    None = $LORAPIPE_HOME or ~/.lorapipe, the same runs `lorapipe runs list` shows."""

    home: str | None = None
    busy_policy: str = "refuse"  # refuse: 503 + Retry-After; wait: hold the request until the run ends; share: no guard
    max_photos: int = 300  # per dataset
    max_photo_bytes: int = 40 * 1024 * 1024  # per uploaded photo
    max_zip_entries: int = 2000
    max_zip_bytes: int = 2 * 1024 * 1024 * 1024  # uncompressed total of one zip (zip bombs)
    max_photo_pixels: int = 100_000_000  # the dataset check's own decompression-bomb guard sits above this
    captioner: str = "blip"
    captioner_model: str | None = None  # a local folder or hub id; None = the captioner's default
    presets: tuple[str, ...] = ()  # the server's own preset TOMLs, offered beside the shipped ones
    run_template: str | None = None  # a run request JSON (backend, output, sagemaker...) every studio run starts from

    def __post_init__(self) -> None:
        if self.busy_policy not in BUSY_POLICIES:
            raise ConfigError(f"--studio-busy-policy {self.busy_policy!r}: use one of {', '.join(BUSY_POLICIES)}")
        if self.max_photos < 1 or self.max_photo_bytes < 1:
            raise ConfigError("studio upload caps: max_photos and max_photo_bytes must be at least 1")
        if self.run_template and not Path(self.run_template).expanduser().is_file():
            raise ConfigError(
                f"--studio-run-template {self.run_template}: no such file; give a run request JSON "
                "(the shape of a run folder's request.json)"
            )
        for preset in self.presets:
            if not Path(preset).expanduser().is_file():
                raise ConfigError(f"--studio-preset {preset}: no such file; give a Kohya training TOML")
