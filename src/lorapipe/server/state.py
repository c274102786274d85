"""What the routes share: the generator, the job queue, the settings and the few settable options."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from lorapipe.generate.generator import Generator
from lorapipe.server.jobs import JobQueue
from lorapipe.server.settings import ServerSettings

# The only /sdapi/v1/options keys a client may change (A1111 lets clients write any setting and saves it to
# disk; a server reachable by others should not). Values are kept in memory only.
SETTABLE_OPTIONS = {
    "sd_model_checkpoint": str,
    "show_progress_every_n_steps": int,
    "samples_format": str,
}


@dataclass
class ServerState:
    settings: ServerSettings
    generator: Generator
    jobs: JobQueue
    options: dict = field(default_factory=dict)
    options_lock: threading.Lock = field(default_factory=threading.Lock)
