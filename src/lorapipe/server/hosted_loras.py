"""The LoRAs a SageMaker hosting instance serves: the model archive's own, plus any fetched from its S3 prefix.

One folder that the generator's LoRA registry reads: the archive's files are linked into it when the model loads,
and a `NAME.safetensors` under the model's S3 LoRA prefix is fetched into it when a prompt first names it (the
store verifies it against its .sha256; a republished file is fetched again, a cached copy outlives S3 being down).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from lorapipe.atomic import atomic_copy
from lorapipe.errors import StoreError
from lorapipe.hosting_contract import HostedModel
from lorapipe.registry import LORA_SUFFIX

log = logging.getLogger("lorapipe.hosting")


class HostedLoras:
    """The generator's LoRA folder on this instance: the archive's LoRAs, plus those fetched from the S3 prefix."""

    def __init__(self, folder: Path, model: HostedModel):
        self.folder = folder
        self.bundled = frozenset(model.loras)
        self.prefix = model.lora_prefix
        folder.mkdir(parents=True, exist_ok=True)
        # One folder for the registry: the archive's LoRAs are linked in (a hard link copies nothing).
        for name, path in model.loras.items():
            target = folder / f"{name}{LORA_SUFFIX}"
            target.unlink(missing_ok=True)
            try:
                os.link(path, target)
            except OSError:
                atomic_copy(path, target)
        self._store = None
        if self.prefix:
            from lorapipe.store import open_store

            self._store = open_store(self.prefix)
        self._lock = threading.Lock()  # one download at a time: two requests naming the same LoRA share it

    def looks_up(self, name: str) -> bool:
        """Whether `name` is looked up in the prefix (the archive's own LoRAs are pinned and never are)."""
        return self._store is not None and name not in self.bundled

    def fetch(self, name: str) -> None:
        """Bring the prefix's newest `name` into the folder when the prefix has it; a cached copy outlives S3
        being unreachable."""
        if not self.looks_up(name):
            return
        rel = f"{name}{LORA_SUFFIX}"
        target = self.folder / rel
        with self._lock:
            try:
                if self._store.exists(rel):
                    self._store.fetch_file(rel, target)
            except StoreError as exc:
                if not target.is_file():
                    raise
                log.warning("%s; using the cached copy", exc)
