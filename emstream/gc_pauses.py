"""Keep CPython's cyclic garbage collector from pausing a live session.

A full (oldest-generation) collection walks every container object the process holds. In the
monitor that is ~240,000 objects before the first frame (Qt, pyqtgraph, ONNX Runtime, NumPy,
SciPy, the window), ~120 ms a walk on the 2-core host (measured). CPython starts one whenever
the objects that survived younger collections grow by a quarter of the old ones, which live
tracking (trackpy allocates a few containers per particle per frame) reaches every ~16 frames
at 1,000 particles. Each such walk holds the interpreter lock, so the pipeline and the window stall
together, and it finds nothing: those objects live for the whole session.

:func:`freeze_startup_objects` (the pipeline calls it once its first frames have warmed every
stage up) collects once and moves everything alive at that moment into
CPython's permanent generation (:func:`gc.freeze`), which collections skip; objects made during
the session are collected as before. :func:`thaw` gives them back to the collector when the
session ends (a process that runs several sessions, such as the test suite, loses nothing).
Reference counting still frees frozen objects as soon as they are unreferenced; only reference
cycles made of frozen objects wait until :func:`thaw`.
"""

from __future__ import annotations

import gc
import threading

__all__ = ["freeze_startup_objects", "thaw"]

_lock = threading.Lock()
_holders = 0


def freeze_startup_objects() -> None:
    """Collect, then freeze every object alive now (counted: nested sessions thaw once, last)."""
    global _holders
    with _lock:
        _holders += 1
        gc.collect()
        gc.freeze()


def thaw() -> None:
    """Undo one :func:`freeze_startup_objects`; the last one returns the objects to the
    collector."""
    global _holders
    with _lock:
        if _holders == 0:
            return
        _holders -= 1
        if _holders == 0:
            gc.unfreeze()
