"""Where the app keeps what the routes share, read in one place.

The lifespan (server/app.py) sets `app.state.lorapipe` (a `ServerState`) once the generator has loaded, or
`app.state.load_error` when it could not, and `app.state.studio` (a `StudioState`) beside it; routes and the shutdown
hook read them through these functions. A studio route declares a `Studio` parameter.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request

from lorapipe.server.api_errors import ApiError
from lorapipe.server.state import ServerState
from lorapipe.server.studio_state import StudioState


def loaded_state(app: FastAPI) -> ServerState | None:
    """The shared state, or None while the model loads (or after it failed to)."""
    return getattr(app.state, "lorapipe", None)


def load_error(app: FastAPI) -> str | None:
    """Why the model could not load, once that is known."""
    return getattr(app.state, "load_error", None)


def serving_state(request: Request) -> ServerState:
    """The shared state of a route that the app mounts only once the model has loaded."""
    return request.app.state.lorapipe


def studio(request: Request) -> StudioState:
    state = getattr(request.app.state, "studio", None)
    if state is None:  # a server loading in the background (SageMaker hosting) has no studio
        raise ApiError(503, "studio: not available while the model loads or on a hosting endpoint")
    return state


Studio = Annotated[StudioState, Depends(studio)]  # what a studio route declares to get the shared state
