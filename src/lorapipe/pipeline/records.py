"""Run records in one embedded SQLite database (WAL, so the CLI reads while a detached worker writes).

A run is one row (id, status, request, cache key, artifact folder, error); its steps are rows of their own. The
database also remembers file hashes keyed by (path, size, mtime) so a multi-GB base model is hashed once, the way
AUTOMATIC1111 caches model hashes by mtime.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lorapipe.errors import PipelineError

RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = frozenset({"succeeded", "failed", "cancelled"})
STEP_NAMES = ("validate", "train", "evaluate", "sample", "publish")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    status TEXT NOT NULL,
    backend TEXT NOT NULL,
    dataset TEXT NOT NULL,
    output TEXT,
    run_dir TEXT NOT NULL,
    request TEXT NOT NULL,
    cache_key TEXT,
    artifact_dir TEXT,
    pid INTEGER,
    error TEXT
);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    started REAL,
    finished REAL,
    detail TEXT,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS file_hashes (
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (path, size, mtime_ns)
);
CREATE TABLE IF NOT EXISTS watched (
    store TEXT NOT NULL,
    dataset TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    run_id TEXT NOT NULL,
    seen REAL NOT NULL,
    PRIMARY KEY (store, dataset, content_hash)
);
CREATE INDEX IF NOT EXISTS runs_cache_key ON runs(cache_key, status);
"""


@dataclass(frozen=True)
class StepRecord:
    name: str
    status: str
    started: float | None
    finished: float | None
    detail: str | None


@dataclass(frozen=True)
class RunRecord:
    id: str
    created: float
    updated: float
    status: str
    backend: str
    dataset: str
    output: str | None
    run_dir: Path
    request: dict
    cache_key: str | None
    artifact_dir: Path | None
    pid: int | None
    error: str | None
    steps: tuple[StepRecord, ...] = field(default=())

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "status": self.status,
            "backend": self.backend,
            "dataset": self.dataset,
            "output": self.output,
            "run_dir": str(self.run_dir),
            "created": self.created,
            "updated": self.updated,
            "cache_key": self.cache_key,
            "artifact_dir": str(self.artifact_dir) if self.artifact_dir else None,
            "pid": self.pid,
            "error": self.error,
            "request": self.request,
            "steps": [step.__dict__ for step in self.steps],
        }


def new_run_id() -> str:
    """Sortable by time, unique without coordination: ``YYYYmmdd-HHMMSS-xxxxxx``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


class RunStore:
    """Reads and writes run records; opens a short-lived connection per operation (safe across processes)."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise PipelineError(f"{self.db_path}: cannot open the run database ({exc}); check the folder") from exc
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=30000")
            yield db
        finally:
            db.close()

    # -- runs ---------------------------------------------------------------------------------------------------
    def create_run(
        self, run_id: str, *, backend: str, dataset: str, output: str | None, run_dir: Path, request: dict
    ) -> RunRecord:
        now = time.time()
        with self._connect() as db:
            db.execute(
                "INSERT INTO runs (id, created, updated, status, backend, dataset, output, run_dir, request)"
                " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                (run_id, now, now, backend, dataset, output, str(run_dir), json.dumps(request, sort_keys=True)),
            )
            for name in STEP_NAMES:
                db.execute("INSERT INTO steps (run_id, name, status) VALUES (?, ?, 'pending')", (run_id, name))
        return self.get(run_id)

    def update_run(self, run_id: str, **fields: object) -> None:
        allowed = {"status", "cache_key", "artifact_dir", "pid", "error"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown run fields {sorted(unknown)}")
        if "status" in fields and fields["status"] not in RUN_STATUSES:
            raise ValueError(f"unknown run status {fields['status']!r}")
        values = {key: (str(value) if isinstance(value, Path) else value) for key, value in fields.items()}
        assignments = ", ".join(f"{key} = ?" for key in values)
        with self._connect() as db:
            db.execute(
                f"UPDATE runs SET {assignments}, updated = ? WHERE id = ?", (*values.values(), time.time(), run_id)
            )

    def start_run(self, run_id: str, pid: int) -> bool:
        """Move a queued run to running; False if it was cancelled before its worker got going."""
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE runs SET status = 'running', pid = ?, updated = ? WHERE id = ? AND status = 'queued'",
                (pid, time.time(), run_id),
            )
            return cursor.rowcount == 1

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> bool:
        """Move an unfinished run to a final status; False if it had already finished (e.g. cancelled)."""
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE runs SET status = ?, error = COALESCE(?, error), updated = ?"
                " WHERE id = ? AND status NOT IN ('succeeded', 'failed', 'cancelled')",
                (status, error, time.time(), run_id),
            )
            return cursor.rowcount == 1

    def get(self, run_id: str) -> RunRecord:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchall()
            if not rows:
                rows = db.execute(
                    "SELECT * FROM runs WHERE id LIKE ? ORDER BY created DESC", (f"%{run_id}%",)
                ).fetchall()
            if len(rows) != 1:
                what = "no run" if not rows else f"{len(rows)} runs"
                raise PipelineError(f"run {run_id!r}: {what} match; see `lorapipe runs list`")
            steps = db.execute("SELECT * FROM steps WHERE run_id = ?", (rows[0]["id"],)).fetchall()
        order = {name: index for index, name in enumerate(STEP_NAMES)}
        step_records = sorted(
            (StepRecord(s["name"], s["status"], s["started"], s["finished"], s["detail"]) for s in steps),
            key=lambda step: order.get(step.name, 99),
        )
        return _run_from_row(rows[0], tuple(step_records))

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [_run_from_row(row, ()) for row in rows]

    def find_cached(self, cache_key: str, exclude_run: str) -> RunRecord | None:
        """The newest run whose train step succeeded under the same content key and left an artifact folder."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT runs.* FROM runs JOIN steps ON steps.run_id = runs.id AND steps.name = 'train'"
                " WHERE runs.cache_key = ? AND runs.id != ? AND steps.status IN ('succeeded', 'cached')"
                " AND runs.artifact_dir IS NOT NULL ORDER BY runs.created DESC",
                (cache_key, exclude_run),
            ).fetchall()
        return _run_from_row(rows[0], ()) if rows else None

    def find_interrupted(self, cache_key: str, exclude_run: str) -> list[RunRecord]:
        """Runs of the same content whose train step was cancelled or failed, newest first (resume candidates)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT runs.* FROM runs JOIN steps ON steps.run_id = runs.id AND steps.name = 'train'"
                " WHERE runs.cache_key = ? AND runs.id != ? AND steps.status IN ('cancelled', 'failed')"
                " ORDER BY runs.created DESC",
                (cache_key, exclude_run),
            ).fetchall()
        return [_run_from_row(row, ()) for row in rows]

    # -- steps --------------------------------------------------------------------------------------------------
    def set_step(self, run_id: str, name: str, status: str, detail: str | None = None) -> None:
        now = time.time()
        started = now if status == "running" else None
        finished = now if status in {"succeeded", "failed", "cached", "skipped", "cancelled"} else None
        with self._connect() as db:
            db.execute(
                "UPDATE steps SET status = ?, detail = COALESCE(?, detail),"
                " started = COALESCE(?, started), finished = COALESCE(?, finished) WHERE run_id = ? AND name = ?",
                (status, detail, started, finished, run_id, name),
            )
            db.execute("UPDATE runs SET updated = ? WHERE id = ?", (now, run_id))

    # -- watch state --------------------------------------------------------------------------------------------
    def watched_run(self, store: str, dataset: str, content_hash: str) -> str | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT run_id FROM watched WHERE store = ? AND dataset = ? AND content_hash = ?",
                (store, dataset, content_hash),
            ).fetchone()
        return row["run_id"] if row else None

    def remember_watched(self, store: str, dataset: str, content_hash: str, run_id: str) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO watched VALUES (?, ?, ?, ?, ?)",
                (store, dataset, content_hash, run_id, time.time()),
            )

    # -- file hash cache ----------------------------------------------------------------------------------------
    def cached_file_hash(self, path: str, size: int, mtime_ns: int) -> str | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT sha256 FROM file_hashes WHERE path = ? AND size = ? AND mtime_ns = ?", (path, size, mtime_ns)
            ).fetchone()
        return row["sha256"] if row else None

    def remember_file_hash(self, path: str, size: int, mtime_ns: int, sha256: str) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?)", (path, size, mtime_ns, sha256))


def _run_from_row(row: sqlite3.Row, steps: tuple[StepRecord, ...]) -> RunRecord:
    return RunRecord(
        id=row["id"],
        created=row["created"],
        updated=row["updated"],
        status=row["status"],
        backend=row["backend"],
        dataset=row["dataset"],
        output=row["output"],
        run_dir=Path(row["run_dir"]),
        request=json.loads(row["request"]),
        cache_key=row["cache_key"],
        artifact_dir=Path(row["artifact_dir"]) if row["artifact_dir"] else None,
        pid=row["pid"],
        error=row["error"],
        steps=steps,
    )
