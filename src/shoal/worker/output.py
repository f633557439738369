"""A worker's stdout and stderr, tagged with the task that writes.

The node keeps every worker's output in a log file and relays it to the
driver (node/logs.py). To tell which task printed what, the first write of
each task is preceded by a marker line, ``TASK_MARKER + task id + " " +
label``, that the node swallows. A task that prints nothing costs two
attribute writes; the marker is written only when output comes. Output
that bypasses sys.stdout (a C extension writing to fd 1) is counted to the
last task that wrote through it. In threaded and async actors, calls that
overlap share one tag: the call that started last.
"""
from __future__ import annotations

import io
import sys

from ..node.logs import TASK_MARKER

_MARK = TASK_MARKER.decode()


class TaggedStream(io.TextIOWrapper):
    """sys.stdout / sys.stderr of a worker (a real TextIOWrapper over the
    same buffer, so ``.buffer`` and ``fileno()`` work as before)."""

    def __init__(self, original):
        super().__init__(original.buffer, encoding=original.encoding, errors=original.errors,
                         line_buffering=original.line_buffering, write_through=True)
        self._original = original       # kept: collecting it would close the buffer
        self.task_id = None             # set by the worker loop as each task starts
        self.label = None
        self._marked = None
        self._line_start = True

    def write(self, s: str) -> int:
        task_id = self.task_id
        if task_id is not self._marked and s:
            self._marked = task_id
            if task_id is not None:
                super().write(("" if self._line_start else "\n")
                              + f"{_MARK}{task_id.hex()} {self.label}\n")
        if s:
            self._line_start = s[-1] == "\n"
        return super().write(s)


def install() -> tuple:
    """Tag this process's stdout and stderr; returns the two streams."""
    sys.stdout = TaggedStream(sys.stdout)
    sys.stderr = TaggedStream(sys.stderr)
    return sys.stdout, sys.stderr
