"""Silence per-file progress bars of transformers/diffusers while serving or generating (logs stay)."""

from __future__ import annotations


def quiet_model_loading() -> None:
    """Turn off library progress bars; a command's output should be its results, not loader noise."""
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
