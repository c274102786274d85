"""Silence per-file progress bars of transformers/diffusers while serving or generating (warnings stay)."""

from __future__ import annotations

import logging


class _DropTorchvisionNotice(logging.Filter):
    """transformers warns that image processors fall back to PIL without torchvision; lorapipe never uses
    torchvision (it is deliberately not installed), so that notice says nothing to our users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision" not in record.getMessage()


def quiet_model_loading() -> None:
    """Turn off library progress bars and the torchvision notice; a command's output should be its results and the
    warnings that matter (library warnings stay on: they say when part of a file was ignored)."""
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    for handler in logging.getLogger("transformers").handlers:
        if not any(isinstance(f, _DropTorchvisionNotice) for f in handler.filters):
            handler.addFilter(_DropTorchvisionNotice())
