"""A worker's stdout and stderr, tagged with the task that writes.

The node keeps every worker's output in a log file and relays it to the
driver (node/logs.py). To tell which task printed what, the first write of
each task is preceded by a marker line, ``TASK_MARKER + task id + " " +
job id (or "-") + " " + label``, that the node swallows (the job id routes
the output to that job's driver only). The task is the one whose call is writing
(core/base.py ``CURRENT_TASK``, a context variable): in threaded and async
actors, calls that overlap each get their own lines. A task that prints
nothing costs nothing here; the marker is written only when output comes.
Output that bypasses sys.stdout (a C extension writing to fd 1), or comes
from a thread the user started, is counted to the last task that wrote
through it.
"""
from __future__ import annotations

import io
import sys

from ..core.base import CURRENT_TASK
from ..node.logs import TASK_MARKER

_MARK = TASK_MARKER.decode()


class TaggedStream(io.TextIOWrapper):
    """sys.stdout / sys.stderr of a worker (a real TextIOWrapper over the
    same buffer, so ``.buffer`` and ``fileno()`` work as before)."""

    def __init__(self, original):
        super().__init__(original.buffer, encoding=original.encoding, errors=original.errors,
                         line_buffering=original.line_buffering, write_through=True)
        self._original = original       # kept: collecting it would close the buffer
        self.label = None               # set by the worker loop as a task starts
        self._marked = None
        self._line_start = True

    def write(self, s: str) -> int:
        if not s:
            return 0
        ctx = CURRENT_TASK.get()
        task_id = ctx.task_id
        marker = ""
        if task_id is not self._marked:
            self._marked = task_id
            if task_id is not None:
                job = ctx.job_id.hex() if ctx.job_id else "-"
                marker = (("" if self._line_start else "\n")
                          + f"{_MARK}{task_id.hex()} {job} {self.label}\n")
        self._line_start = s[-1] == "\n"
        super().write(marker + s)        # one write: another thread's cannot come between
        return len(s)


def install() -> tuple:
    """Tag this process's stdout and stderr; returns the two streams."""
    sys.stdout = TaggedStream(sys.stdout)
    sys.stderr = TaggedStream(sys.stderr)
    return sys.stdout, sys.stderr
