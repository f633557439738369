"""``shoal.util.tqdm.tqdm``: a progress bar that tasks and actors on any
node advance and the driver draws (Ray's ``tqdm_ray``).

    from shoal.util.tqdm import tqdm

    @shoal.remote
    def shard(i):
        for row in tqdm(range(1000), desc="preprocess"):
            ...

Bars with the same ``desc`` are one bar in the driver's terminal, summing
every process's count and total (node/progress.py draws them). In a worker
a bar reports itself at most every ``flush_interval_s`` and when it ends,
as a marker line in its output that the driver takes instead of printing.
"""
from __future__ import annotations

import json
import os
import sys
import time

from ..node.progress import PROGRESS_MARKER, driver_progress


class tqdm:
    def __init__(self, iterable=None, desc: str | None = None, total: float | None = None,
                 unit: str = "it", position=None, flush_interval_s: float = 0.1, **_ignored):
        if total is None and iterable is not None:
            try:
                total = len(iterable)
            except TypeError:
                total = None
        if total is not None and (isinstance(total, bool) or
                                  not isinstance(total, (int, float)) or total < 0):
            raise ValueError(f"total must be a non-negative number, got {total!r}")
        self.iterable = iterable
        self.desc = desc if desc is not None else "progress"
        self.total = total
        self.unit = unit
        self.n = 0
        self.closed = False
        self.interval = flush_interval_s
        self._id = f"{os.getpid()}-{id(self):x}-{time.monotonic_ns()}"
        self._last = 0.0
        self._report(force=True)

    def __iter__(self):
        if self.iterable is None:
            raise TypeError("this tqdm has no iterable; call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n: float = 1) -> None:
        if isinstance(n, bool) or not isinstance(n, (int, float)):
            raise TypeError(f"update(n) takes a number, got {n!r}")
        self.n += n
        self._report(force=self.total is not None and self.n >= self.total)

    def set_description(self, desc: str) -> None:
        self._report(force=True, closing_name=self.desc)   # the old name's part ends
        self.desc = str(desc)
        self._report(force=True)

    def refresh(self) -> None:
        self._report(force=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._report(force=True)

    def _report(self, force: bool, closing_name: str | None = None) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        name = closing_name or self.desc
        closed = self.closed or closing_name is not None
        from ..core import current_core
        core = current_core()
        if core is None or core.is_driver:        # the driver draws it itself
            driver_progress().report(self._id + (closing_name or ""), name, self.n,
                                     self.total, closed, self.unit)
            return
        report = json.dumps({"id": self._id + (closing_name or ""), "name": name,
                             "n": self.n, "total": self.total, "closed": closed,
                             "unit": self.unit})
        out = sys.stdout
        start = "" if getattr(out, "_line_start", True) else "\n"
        try:
            out.write(f"{start}{PROGRESS_MARKER}{report}\n")
            out.flush()
        except (OSError, ValueError):
            pass


__all__ = ["tqdm"]
