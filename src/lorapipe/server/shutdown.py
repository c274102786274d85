"""Serving with a prompt stop: on SIGTERM (or Ctrl+C) the server takes no new work, cancels running jobs at their
next denoising step (their clients get a 503 that says so) and exits within seconds.

uvicorn alone stops accepting connections and then waits, without a limit, for every open request to finish; a
long generation kept a stopped server alive for its whole length. Closing the job queue first makes those
requests end at once, and `timeout_graceful_shutdown` bounds whatever is left.
"""

from __future__ import annotations

import threading

import uvicorn

from lorapipe.server.deps import loaded_state

GRACEFUL_SHUTDOWN_S = 10  # after the jobs are cancelled, the longest uvicorn waits for responses to go out


class PromptShutdownServer(uvicorn.Server):
    """uvicorn's Server that closes the app's job queue as soon as a stop signal arrives."""

    def handle_exit(self, sig, frame) -> None:
        state = loaded_state(self.config.app)
        if state is not None:
            # A signal handler runs on the main thread between two bytecodes, possibly while that thread holds
            # the queue's lock (submitting a job); closing from another thread cannot deadlock on it.
            threading.Thread(target=state.jobs.close, name="lorapipe-shutdown", daemon=True).start()
        super().handle_exit(sig, frame)


def serve(app, *, host: str, port: int) -> None:
    """Run `app` (from `create_app`) until a stop signal; returns when the server has shut down."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        timeout_keep_alive=30,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    PromptShutdownServer(config).run()
