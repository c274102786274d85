"""Where the app keeps what the routes share, read in one place.

The lifespan (server/app.py) sets `app.state.lorapipe` (a `ServerState`) once the generator has loaded, or
`app.state.load_error` when it could not, and `app.state.studio` (a `StudioState`) beside it; SageMaker hosting's
loader adds `app.state.hosted_loras` (a `HostedLoras`). Routes, middleware and the shutdown hook read them through
these functions, nothing else reads `app.state`: a studio route declares a `Studio` parameter, a hosting route
`Ready` and `HostedLoraSet`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request

from lorapipe.server.api_errors import ApiError
from lorapipe.server.hosted_loras import HostedLoras
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


async def ready_state(request: Request) -> ServerState:
    """The shared state on a server that loads its model in the background (SageMaker hosting): until it is there,
    a 503 in A1111's shape saying whether the model is still loading or why it could not load."""
    state = loaded_state(request.app)
    if state is not None:
        return state
    reason = load_error(request.app)
    if reason:
        raise ApiError(503, reason, error="ModelNotLoaded")
    raise ApiError(503, "the base model is still loading", error="ModelLoading")


# async: a plain-def dependency would cost a thread-pool hop on every request
Ready = Annotated[ServerState, Depends(ready_state)]  # a hosting route: the loaded state, else a 503


def keep_hosted_loras(app: FastAPI, loras: HostedLoras) -> None:
    """Hosting's loader hands over the LoRA folder it built beside the generator."""
    app.state.hosted_loras = loras


async def hosted_loras(request: Request, _loaded: Ready) -> HostedLoras:
    """The instance's LoRA folder (the loader sets it before the generator's state, so it is there once `Ready`)."""
    return request.app.state.hosted_loras


HostedLoraSet = Annotated[HostedLoras, Depends(hosted_loras)]  # a hosting route: the instance's LoRA folder


def studio_of(app: FastAPI) -> StudioState | None:
    """The studio's shared state; None on a server without one (loading in the background, SageMaker hosting)."""
    return getattr(app.state, "studio", None)


async def studio(request: Request) -> StudioState:
    # async although it awaits nothing: FastAPI runs a plain-def dependency in its thread pool, a thread hop on every
    # request (e.g. each poll of a run the page follows)
    state = studio_of(request.app)
    if state is None:  # a server loading in the background (SageMaker hosting) has no studio
        raise ApiError(503, "studio: not available while the model loads or on a hosting endpoint")
    return state


Studio = Annotated[StudioState, Depends(studio)]  # what a studio route declares to get the shared state
