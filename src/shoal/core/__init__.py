"""The process's runtime: what the public API calls.

``base.Core`` holds what drivers and workers share (building task specs,
turning values into wire values and back, the current task's context);
``driver.DriverCore`` calls a node living in this process, and
``worker.WorkerCore`` talks to its node over the worker's socket.
"""
from __future__ import annotations

import threading

_core = None
_init_lock = threading.RLock()


def get_core():
    """The runtime of this process, starting a local one on first use (as Ray
    auto-initialises)."""
    core = _core
    if core is None:
        from ..api import init
        init()
        core = _core
    return core


def current_core():
    return _core


def set_core(core) -> None:
    global _core
    _core = core
