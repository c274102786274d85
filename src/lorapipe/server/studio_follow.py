"""Following runs by server-sent events: one watcher per followed run, shared by every client that follows it.

However many pages or scripts follow a run, the server looks at its files once per interval (a few `stat` calls:
`StudioRuns.current_snapshot` rebuilds only on change) and wakes the followers only when the snapshot changed, so
the followers cost the run (which shares the machine's CPU with the server) next to nothing. The watcher stops when
the run ends, when it is deleted, or when its last follower leaves. Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from lorapipe.pipeline.records import FINISHED
from lorapipe.server.api_errors import ApiError
from lorapipe.server.studio_runs import Snapshot

WATCH_INTERVAL_S = 0.5  # how often a followed run's files are looked at
KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing a quiet stream


@dataclass
class _Feed:
    latest: Snapshot | None = None
    gone: ApiError | None = None  # the run was deleted while followed
    done: bool = False
    version: int = 0
    followers: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # replaced (after being set) on every change
    task: asyncio.Task | None = None

    def publish(self, *, latest: Snapshot | None = None, gone: ApiError | None = None, done: bool = False) -> None:
        if latest is not None:
            self.latest = latest
            self.version += 1
        self.gone = gone or self.gone
        self.done = done or self.done
        wake, self.changed = self.changed, asyncio.Event()
        wake.set()


class RunFeeds:
    """The live feeds of followed runs; `follow(run_id)` yields each new snapshot (None: time for a keep-alive)."""

    def __init__(
        self,
        look: Callable[[str], Awaitable[Snapshot]],
        *,
        interval_s: float = WATCH_INTERVAL_S,
        keepalive_s: float = KEEPALIVE_S,
    ):
        """`look(run_id)`: the run's current snapshot (off the event loop), raising ApiError when it is gone."""
        self.look = look
        self.interval_s = interval_s
        self.keepalive_s = keepalive_s
        self._feeds: dict[str, _Feed] = {}

    async def follow(self, run_id: str) -> AsyncIterator[Snapshot | None]:
        """Snapshots of the run as they change, ending after the one that says it finished.

        Raises ApiError (404) when the run is deleted while followed."""
        feed = self._feeds.get(run_id)
        if feed is None:
            feed = self._feeds[run_id] = _Feed()
            feed.task = asyncio.create_task(self._watch(run_id, feed), name=f"lorapipe-follow-{run_id}")
        feed.followers += 1
        seen = 0
        try:
            while True:
                if feed.version != seen and feed.latest is not None:
                    seen = feed.version
                    yield feed.latest
                    continue
                if feed.gone is not None:
                    raise feed.gone
                if feed.done:
                    return
                changed = feed.changed
                try:
                    await asyncio.wait_for(changed.wait(), self.keepalive_s)
                except TimeoutError:
                    yield None
        finally:
            feed.followers -= 1

    async def _watch(self, run_id: str, feed: _Feed) -> None:
        try:
            while True:
                try:
                    snapshot = await self.look(run_id)
                except ApiError as exc:
                    feed.publish(gone=exc, done=True)
                    return
                changed = feed.latest is None or snapshot.etag != feed.latest.etag
                finished = snapshot.status in FINISHED
                if changed or finished:
                    feed.publish(latest=snapshot if changed else None, done=finished)
                if finished:
                    return
                await asyncio.sleep(self.interval_s)
                if feed.followers == 0:  # everyone left: stop looking
                    feed.publish(done=True)
                    return
        finally:
            if not feed.done:  # cancelled (shutdown): let the followers end
                feed.publish(done=True)
            if self._feeds.get(run_id) is feed:
                del self._feeds[run_id]

    async def close(self) -> None:
        """Stop every watcher (the server is shutting down)."""
        tasks = [feed.task for feed in self._feeds.values() if feed.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
