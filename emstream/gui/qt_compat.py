"""Work-arounds for bugs of the installed Qt binding, detected at run time (not by version).

PySide6 6.12.0 on CPython < 3.12: every ``SignalInstance.emit()`` drops one reference to the
``bool`` it returns. ``True`` is not immortal before Python 3.12, so after a few thousand emits
(pyqtgraph emits on every range change, the GUI sink on every frame) the interpreter aborts with
``Fatal Python error: bool_dealloc``. :func:`guard_emit_refcount_bug` probes for the leak and, only
where it is present, gives ``True``/``False``/``None`` a reserve of references so large that the
leak can never exhaust it (2**50 emits ≈ 35,000 years at a million emits a second). The
singletons are never freed anyway, so the reserve changes nothing else.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

_RESERVE = 1 << 50
_applied = False


def _probe_leaks() -> bool:
    from PySide6 import QtCore

    class _Probe(QtCore.QObject):
        sig = QtCore.Signal()

    p = _Probe()
    before = sys.getrefcount(True) + sys.getrefcount(False)
    for _ in range(32):
        p.sig.emit()
    after = sys.getrefcount(True) + sys.getrefcount(False)
    return after < before - 16


def guard_emit_refcount_bug() -> bool:
    """Protect the interpreter from the emit() reference leak if this binding has it.

    Returns True when the guard was applied (now or earlier).
    """
    global _applied
    if _applied:
        return True
    if sys.implementation.name != "cpython" or sys.version_info >= (3, 12):
        return False  # bool/None are immortal from 3.12 on
    try:
        leaks = _probe_leaks()
    except Exception:  # pragma: no cover - probing must never break the GUI
        log.debug("emit refcount probe failed", exc_info=True)
        return False
    if not leaks:
        return False
    for obj in (True, False, None):
        ctypes.c_ssize_t.from_address(id(obj)).value += _RESERVE
    _applied = True
    log.info("PySide6 emit() reference leak detected: bool/None reference reserve applied")
    return True
