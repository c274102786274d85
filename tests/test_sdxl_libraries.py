"""The SDXL stack imports with the garbage collector paused, and the objects it made are frozen out of later passes."""

import gc
import weakref

from lorapipe.sdxl.libraries import collector_paused, loaded_models_frozen


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_collector_paused_for_the_block_then_freezes_and_resumes():
    assert gc.isenabled()
    try:
        with collector_paused():
            assert not gc.isenabled()
            kept = _Node()
            garbage = weakref.ref(_Node())
        assert garbage() is None  # collected once at the end, not frozen alive
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0
        assert not any(obj is kept for obj in gc.get_objects())  # in the permanent generation: never walked
    finally:
        gc.unfreeze()


def test_collector_stays_off_when_it_was_off():
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()


def test_loaded_models_frozen_collects_garbage_first_and_unfreezes_after():
    garbage = weakref.ref(_Node())
    with loaded_models_frozen():
        assert garbage() is None  # collected, not frozen alive
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
