"""One accelerator, two jobs: generation requests while a local training run holds the device.

Policy `refuse` answers 503 with Retry-After (the run's own ETA) and says which run; `wait` holds the request
until the run ends (up to the request timeout, then 503); `share` lets both run (enough memory, or separate
devices). Pure ASGI, like the other guards, placed inside the auth guard so a stranger learns nothing.
"""

from __future__ import annotations

import asyncio
import time

from lorapipe.server.deps import studio_of
from lorapipe.server.guards import error_body, send_json

GENERATION_PATHS = frozenset({"/sdapi/v1/txt2img", "/sdapi/v1/img2img"})
_WAIT_POLL_S = 1.0


class TrainingBusyMiddleware:
    def __init__(self, app, *, policy: str, timeout_s: float):
        self.app = app
        self.policy = policy
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if self.policy == "share" or scope["type"] != "http" or scope["path"] not in GENERATION_PATHS:
            return await self.app(scope, receive, send)
        studio = studio_of(scope["app"])
        if studio is None:
            return await self.app(scope, receive, send)
        run = await asyncio.to_thread(studio.runs.training_run)
        deadline = time.monotonic() + self.timeout_s
        while run is not None and self.policy == "wait" and time.monotonic() < deadline:
            await asyncio.sleep(_WAIT_POLL_S)
            run = await asyncio.to_thread(studio.runs.training_run)
        if run is None:
            return await self.app(scope, receive, send)
        retry = await asyncio.to_thread(studio.runs.retry_after, run)
        detail = (
            f"busy: training run {run.id} is using the GPU the generator uses; generation resumes when it "
            f"finishes (about {retry} s), or cancel the run in the studio"
        )
        await send_json(send, 503, error_body(detail), [(b"retry-after", str(retry).encode())])
