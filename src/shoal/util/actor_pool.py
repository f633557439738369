"""ActorPool: spread calls over a fixed set of actors, one call per actor at a time.

Built on the public API only (``shoal.wait``, ``shoal.get``); the pool lives
in the process that made it and is not meant to be shared. Semantics follow
``ray.util.ActorPool``: ``get_next`` returns results in submission order,
``get_next_unordered`` as they finish, and an actor goes back to the idle
set as soon as its result is taken (before the value is fetched, so a call
that raised does not lose its actor).
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterable, Iterator

import shoal

_TIMED_OUT = "Timed out waiting for result"


class ActorPool:
    """A pool of actors; ``fn(actor, value)`` must return the ObjectRef (or
    list of ObjectRefs) of one call on ``actor``, e.g.
    ``lambda a, v: a.double.remote(v)``."""

    def __init__(self, actors: list):
        self._idle: list = list(actors)
        self._waiting: deque = deque()     # (fn, value) submitted while every actor was busy
        self._calls: dict[int, tuple[Any, Any]] = {}   # index -> (result, actor), in flight
        self._next_index = 0               # index of the next call started
        self._next_ordered = 0             # index get_next returns next

    # -- submitting ----------------------------------------------------------
    def submit(self, fn: Callable, value) -> None:
        """Run ``fn(actor, value)`` on an idle actor, or once one frees up."""
        if not self._idle:
            self._waiting.append((fn, value))
            return
        actor = self._idle.pop()
        result = fn(actor, value)
        self._calls[self._next_index] = (result, actor)
        self._next_index += 1

    def map(self, fn: Callable, values: Iterable) -> Iterator:
        """Results of ``fn(actor, v)`` for each value, in the order of ``values``.
        Results still pending from earlier calls are dropped first."""
        self._drop_pending(self.get_next)
        for v in values:
            self.submit(fn, v)

        def results():
            while self.has_next():
                yield self.get_next()
        return results()

    def map_unordered(self, fn: Callable, values: Iterable) -> Iterator:
        """Like ``map``, but each result comes as soon as it is ready."""
        self._drop_pending(self.get_next_unordered)
        for v in values:
            self.submit(fn, v)

        def results():
            while self.has_next():
                yield self.get_next_unordered()
        return results()

    def _drop_pending(self, get_next) -> None:
        while self.has_next():
            try:
                get_next(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass
            except Exception:   # an old call's error belongs to nobody now
                pass

    # -- results -------------------------------------------------------------
    def has_next(self) -> bool:
        """Whether any submitted call's result has not been returned yet."""
        return bool(self._calls)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False):
        """The next result in submission order. Raises StopIteration when
        nothing is pending and TimeoutError when ``timeout`` passes first; with
        ``ignore_if_timedout`` that call is given up (its actor is reused)."""
        if not self._calls:
            raise StopIteration("No more results to get")
        if self._next_ordered not in self._calls:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        index = self._next_ordered
        result, _ = self._calls[index]
        if timeout is not None and not _ready([_first_ref(result)], timeout):
            if not ignore_if_timedout:
                raise TimeoutError(_TIMED_OUT)
            self._finish(index)
            raise TimeoutError(f"{_TIMED_OUT}. The call {result} has been ignored.")
        self._finish(index)
        return shoal.get(result)

    def get_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False):
        """Whichever pending result is ready first. Raises StopIteration when
        nothing is pending and TimeoutError when ``timeout`` passes first; with
        ``ignore_if_timedout`` the oldest call is given up."""
        if not self._calls:
            raise StopIteration("No more results to get")
        by_ref = {_first_ref(result): index for index, (result, _) in self._calls.items()}
        ready, _ = shoal.wait(list(by_ref), num_returns=1, timeout=timeout)
        if not ready:
            if not ignore_if_timedout:
                raise TimeoutError(_TIMED_OUT)
            oldest = min(self._calls)
            result = self._calls[oldest][0]
            self._finish(oldest)
            raise TimeoutError(f"{_TIMED_OUT}. The call {result} has been ignored.")
        index = by_ref[ready[0]]
        result = self._calls[index][0]
        self._finish(index)
        return shoal.get(result)

    def _finish(self, index: int) -> None:
        """Forget call ``index`` and give its actor the next waiting value."""
        _, actor = self._calls.pop(index)
        self._next_ordered = max(self._next_ordered, index + 1)
        self._return_actor(actor)

    def _return_actor(self, actor) -> None:
        self._idle.append(actor)
        if self._waiting:
            self.submit(*self._waiting.popleft())

    # -- membership ----------------------------------------------------------
    def has_free(self) -> bool:
        """Whether an actor is idle and no submitted value is waiting for one."""
        return bool(self._idle) and not self._waiting

    def pop_idle(self):
        """Take an idle actor out of the pool, or None if none is free."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor) -> None:
        """Add ``actor`` to the pool (it gets a waiting value at once, if any)."""
        busy = [a for _, a in self._calls.values()]
        if actor in self._idle or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)


def _first_ref(result):
    """The ref to wait on for a call: its only ref, or the first of several
    (the refs of one call are all ready at the same time)."""
    return result[0] if isinstance(result, (list, tuple)) else result


def _ready(refs: list, timeout: float) -> bool:
    ready, _ = shoal.wait(refs, num_returns=len(refs), timeout=timeout)
    return len(ready) == len(refs)
