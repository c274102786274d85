"""Where the app keeps what the routes share, read in one place.

The lifespan (server/app.py) sets `app.state.lorapipe` (a `ServerState`) once the generator has loaded, or
`app.state.load_error` when it could not; routes and the shutdown hook read them through these functions.
"""

from __future__ import annotations

from fastapi import FastAPI, Request

from lorapipe.server.state import ServerState


def loaded_state(app: FastAPI) -> ServerState | None:
    """The shared state, or None while the model loads (or after it failed to)."""
    return getattr(app.state, "lorapipe", None)


def load_error(app: FastAPI) -> str | None:
    """Why the model could not load, once that is known."""
    return getattr(app.state, "load_error", None)


def serving_state(request: Request) -> ServerState:
    """The shared state of a route that the app mounts only once the model has loaded."""
    return request.app.state.lorapipe
