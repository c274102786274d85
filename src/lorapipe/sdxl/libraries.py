"""Import the SDXL stack (torch, diffusers' SDXL pipeline, transformers' CLIP, peft) with Python's cyclic garbage
collector paused, then freeze what the import made.

Importing these libraries creates about half a million objects (modules, classes, functions) that live as long as
the process. While they import, the collector's full passes walk all of them again and again: about ten passes,
2-3 s of CPU in a `lorapipe train` or `generate` start-up on a small CPU (diffusers' own scripts pay the same).
Pausing the collector for the import, collecting once at the end (what the import left in reference cycles, about
15 MiB, is freed) and then moving the survivors into the permanent generation (`gc.freeze`) does that work once, and
keeps every later full pass (during loading, and the training loop's) to the objects made since.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause automatic garbage collection for the block; afterwards collect once, freeze the survivors out of later
    passes and resume collecting (as it was before the block)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.collect()  # one full pass frees what the block left in reference cycles (else ~15 MiB stays for good)
        gc.freeze()
        if was_enabled:
            gc.enable()


def import_sdxl_libraries() -> None:
    """Import what loading and running an SDXL pipeline needs, under `collector_paused`. Call it at a process's
    entry point (the commands, the SageMaker training entry, the hosting loader), before the first heavy import:
    what it freezes is never collected, so not from library code a long-lived process runs again and again."""
    with collector_paused():
        import torch  # noqa: F401
        from diffusers import StableDiffusionXLPipeline  # noqa: F401  (its lazy import brings transformers, peft)


@contextmanager
def loaded_models_frozen() -> Iterator[None]:
    """Collect once, then freeze the survivors (loaded models, caches) for the block: they live through it, so the
    collector's full passes (every few hundred training steps) need not walk them. Unfrozen afterwards, so a
    process that trains again (tests, a long-lived service) can still collect the models of this run. Python has one
    permanent generation, so this also thaws what `import_sdxl_libraries` froze: later passes walk it again, which
    costs time only, after the run."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
