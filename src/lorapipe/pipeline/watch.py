"""`pipeline watch`: start a run for every NNNN-dataset in a store whose content has not been run yet.

"New or changed" is decided by content hash, as for the step cache: touching a file changes nothing, replacing an
image starts a run. The store is a local folder or an ``s3://`` prefix (fetched into the sha256-verified cache).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TextIO

from lorapipe.errors import LorapipeError
from lorapipe.pipeline.hashing import ContentHasher
from lorapipe.pipeline.records import RunStore
from lorapipe.pipeline.request import PipelineHome, RunRequest

DATASET_FOLDER = re.compile(r"^\d{4}-dataset$")


class DatasetWatcher:
    def __init__(self, home: PipelineHome, store_url: str, template: RunRequest, *, detach: bool = True) -> None:
        self.home = home
        self.store_url = store_url.rstrip("/")
        self.template = template
        self.detach = detach
        self.records = RunStore(home.database)

    def dataset_folders(self) -> dict[str, Path]:
        """Dataset name -> local folder (the folder itself, or its verified download from S3)."""
        if not self.store_url.startswith("s3://"):
            root = Path(self.store_url)
            return {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and DATASET_FOLDER.match(p.name)}
        from lorapipe.store import open_store

        store = open_store(self.store_url, endpoint_url=self.template.s3_endpoint_url)
        names = [name for name in store.list_datasets() if DATASET_FOLDER.match(str(name).rstrip("/"))]
        return {name: Path(store.fetch_dataset(name, self.home.dataset_cache)) for name in names}

    def poll_once(self, out: TextIO) -> list[str]:
        """Start runs for new or changed datasets; return their run ids."""
        from lorapipe.pipeline.runs import create_run, start_detached

        hasher = ContentHasher(self.records)
        started: list[str] = []
        for name, folder in self.dataset_folders().items():
            content = hasher.folder(folder)
            previous = self.records.watched_run(self.store_url, name, content)
            if previous:
                continue
            dataset = f"{self.store_url}/{name}/" if self.store_url.startswith("s3://") else str(folder)
            try:
                record = create_run(dataclasses.replace(self.template, dataset=dataset), self.home)
            except LorapipeError as exc:
                out.write(f"watch: {name}: cannot start a run: {exc}\n")
                continue
            self.records.remember_watched(self.store_url, name, content, record.id)
            if self.detach:
                start_detached(self.home, record.id)
            out.write(f"watch: {name} is new or changed ({content[:12]}): run {record.id}\n")
            started.append(record.id)
        out.flush()
        return started
