"""Server settings: one frozen value built by `lorapipe serve` (or a test) and handed to `create_app`."""

from __future__ import annotations

from dataclasses import dataclass, field

from lorapipe.errors import ConfigError
from lorapipe.server.studio_settings import StudioSettings

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for; beyond them the answer is 422 (or 413 for the body)."""

    max_steps: int = 150
    max_side: int = 4096
    max_pixels: int = 2048 * 2048  # per generated or uploaded image
    max_batch_size: int = 8
    max_n_iter: int = 16
    max_body_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    base_model: str | None = None
    lora_dir: str | None = None
    host: str = LOOPBACK
    port: int = 7860
    api_auth: tuple[tuple[str, str], ...] = ()
    queue_size: int = 8
    request_timeout_s: float = 600.0
    cors_origins: tuple[str, ...] = ()
    device: str | None = None
    dtype: str | None = None
    limits: Limits = Limits()
    studio: StudioSettings = field(default_factory=StudioSettings)

    def __post_init__(self) -> None:
        if self.host != LOOPBACK and self.host not in ("localhost", "::1") and not self.api_auth:
            raise ConfigError(
                f"--listen/host {self.host}: refusing to serve beyond this machine without --api-auth USER:PASS"
            )
        if self.queue_size < 1:
            raise ConfigError(f"queue_size: {self.queue_size} must be at least 1")


def parse_api_auth(text: str | None) -> tuple[tuple[str, str], ...]:
    """`user1:pass1,user2:pass2` -> pairs (the password may contain ':'; only the first ':' splits)."""
    if not text:
        return ()
    pairs = []
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise ConfigError(f"--api-auth: {item.strip()!r} is not USER:PASS; give USER:PASS[,USER2:PASS2]")
        pairs.append((user, password))
    return tuple(pairs)
