"""ASGI middleware that guards every route: HTTP Basic auth and a request-body size cap.

Pure ASGI (not BaseHTTPMiddleware) so handlers still see client disconnects, which cancel their jobs.
Basic auth is what A1111 clients (webuiapi, scripts) send. The web pages sign in with their own form instead of the
browser's dialog: their requests carry `X-Requested-With`, and a refusal of such a request has no Basic challenge
(a challenge is what makes a browser pop its dialog up). The pages' own files (HTML, JS, CSS: no data) are open paths,
so the form can be shown at all.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Sequence

OPEN_PATHS = frozenset({"/internal/ping"})  # the health probe stays open so load balancers need no secret
PAGE_REQUEST_HEADER = b"x-requested-with"  # sent by the pages' fetches (static/auth.js): refuse without a challenge


def error_body(status_detail: str, *, error: str = "HTTPException", errors: str = "") -> bytes:
    """A1111's error shape: {"error", "detail", "body", "errors"}."""
    return json.dumps({"error": error, "detail": status_detail, "body": "", "errors": errors}).encode()


async def send_json(send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BasicAuthMiddleware:
    """Require one of `credentials` on every HTTP route except `open_paths`; constant-time comparison."""

    def __init__(self, app, credentials: Sequence[tuple[str, str]], open_paths: frozenset[str] = OPEN_PATHS):
        self.app = app
        self._credentials = [(u.encode(), p.encode()) for u, p in credentials]
        self._open_paths = open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self._open_paths:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        challenge = PAGE_REQUEST_HEADER not in headers
        scheme, _, encoded = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"basic" or not encoded:
            return await self._refuse(send, "Not authenticated", challenge)
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return await self._refuse(send, "Not authenticated", challenge)
        if not sep or not self._matches(user, password):
            return await self._refuse(send, "Incorrect username or password", challenge)
        return await self.app(scope, receive, send)

    def _matches(self, user: bytes, password: bytes) -> bool:
        matched = False
        for known_user, known_password in self._credentials:  # check all pairs: timing does not reveal which
            ok_user = secrets.compare_digest(user, known_user)
            ok_password = secrets.compare_digest(password, known_password)
            matched |= ok_user and ok_password
        return matched

    @staticmethod
    async def _refuse(send, detail: str, challenge: bool) -> None:
        headers = [(b"www-authenticate", b'Basic realm="lorapipe"')] if challenge else []
        await send_json(send, 401, error_body(detail), headers)


class BodyLimitMiddleware:
    """Answer 413 when a body is larger than `max_bytes`, by Content-Length or while it streams in."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await send_json(send, 413, error_body(f"request body over {self.max_bytes} bytes"))
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await send_json(send, 413, error_body(f"request body over {self.max_bytes} bytes"))


class _BodyTooLarge(Exception):
    pass
