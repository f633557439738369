"""Waiting for other members: fast when they are close, never forever.

A wait spins briefly (a member on another core answers in microseconds),
then yields the CPU, then sleeps in growing steps up to 1 ms (members may
share cores). Every ``LIVENESS_S`` it checks that the members it waits for
still live, and it gives up at the group's deadline: a dead or missing
member becomes a ``CollectiveError`` on every other member in bounded time.
"""
from __future__ import annotations

import os
import time

import psutil

from ..exceptions import CollectiveError

LIVENESS_S = 0.1
SPIN = 20
YIELD_S = 0.002


class Member:
    """A member process, recognised by pid and start time (pids get reused)."""

    __slots__ = ("rank", "pid", "started", "_proc")

    def __init__(self, rank: int, pid: int, started: float):
        self.rank, self.pid, self.started = rank, pid, started
        self._proc = None

    def alive(self) -> bool:
        try:
            if self._proc is None:
                self._proc = psutil.Process(self.pid)
            if abs(self._proc.create_time() - self.started) > 0.5:
                return False
            return self._proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


def my_identity() -> dict:
    me = psutil.Process()
    return {"pid": os.getpid(), "started": me.create_time()}


def wait_until(ready, *, group: str, what: str, members, timeout_s: float,
               failed=None) -> None:
    """Return once ``ready()`` is true. ``failed()`` (optional) returns an
    error message when the group was aborted by a member; ``members`` are
    checked for death every LIVENESS_S."""
    if ready():
        return
    for _ in range(SPIN):
        if ready():
            return
    start = time.monotonic()
    deadline = start + timeout_s
    next_check = start + LIVENESS_S
    pause = 0.0
    while not ready():
        now = time.monotonic()
        if failed is not None:
            msg = failed()
            if msg:
                raise CollectiveError(f"collective group {group!r}: {msg} (while {what})")
        if now >= next_check:
            for m in members:
                if not m.alive():
                    raise CollectiveError(
                        f"collective group {group!r}: rank {m.rank} (pid {m.pid}) died "
                        f"while {what}")
            if now >= deadline:
                raise CollectiveError(f"collective group {group!r}: timed out after "
                                      f"{timeout_s:g} s while {what}")
            next_check = now + LIVENESS_S
        if now - start < YIELD_S:
            os.sched_yield()
        else:
            pause = min(0.001, pause * 2 or 0.00005)
            time.sleep(pause)
