"""What Pool calls hand back: ``AsyncResult`` (apply_async), ``MapResult``
(map_async, starmap_async) and ``IMapIterator`` (imap, imap_unordered).

Each is a *sink* that only the pool's dispatcher thread fills, through three
methods: ``_chunk_done(index, ok, value)`` as each chunk of calls finishes
(``value`` is the chunk's list of results, or the exception), then
``_input_done(count)`` once the input has run out after ``count`` chunks,
or ``_fail(error)`` when the pool is terminated first. Callers read them
from any thread; callbacks run on the dispatcher thread, as multiprocessing
runs them on its result-handler thread. Until complete, each holds its pool,
so ``Pool(2).imap(...)`` is not terminated by the pool's ``__del__`` midway
(multiprocessing does the same).
"""
from __future__ import annotations

import builtins
import multiprocessing
import threading
import time
import traceback
from collections import deque

from shoal.exceptions import TaskError


class TimeoutError(multiprocessing.TimeoutError, builtins.TimeoutError):
    """A result was not ready in time. Both ``except multiprocessing.TimeoutError``
    (the drop-in) and ``except TimeoutError`` (as in Ray) catch it."""


class RemoteTraceback(Exception):
    """Set as ``__cause__`` of an error re-raised from a worker, as
    multiprocessing does, so the worker's traceback prints too."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def user_error(err: BaseException) -> BaseException:
    """The exception a caller sees: the user's own (not shoal's TaskError
    wrapper) when it could travel, with the remote traceback as its cause."""
    if isinstance(err, TaskError) and err.cause is not None:
        cause = err.cause
        cause.__cause__ = RemoteTraceback(err.traceback_str)
        return cause
    return err


def _run_callback(callback, value) -> None:
    # a failing callback must not stop the dispatcher, or every later result would hang
    try:
        callback(value)
    except Exception:
        traceback.print_exc()


class AsyncResult:
    """The result of ``apply_async``: one call."""

    def __init__(self, pool, callback=None, error_callback=None):
        self._pool = pool
        self._done = threading.Event()
        self._ok: bool | None = None
        self._value = None
        self._callback = callback
        self._error_callback = error_callback

    def ready(self) -> bool:
        return self._done.is_set()

    def successful(self) -> bool:
        """Whether the call returned without raising; ValueError if not ready."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return bool(self._ok)

    def wait(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)

    def get(self, timeout: float | None = None):
        """The value, or the call's exception raised here; TimeoutError if
        it is not ready within ``timeout`` seconds."""
        if not self._done.wait(timeout):
            raise TimeoutError
        if self._ok:
            return self._value
        raise self._value

    # -- filled by the dispatcher thread --------------------------------------
    def _chunk_done(self, index: int, ok: bool, value) -> None:
        self._set(ok, value[0] if ok else value)

    def _input_done(self, count: int) -> None:
        pass

    def _fail(self, error: BaseException) -> None:
        self._set(False, error)

    def _set(self, ok: bool, value) -> None:
        if self._done.is_set():
            return
        self._ok, self._value = ok, value
        self._pool = None
        callback = self._callback if ok else self._error_callback
        if callback is not None:
            _run_callback(callback, value)
        self._done.set()     # after the callback, as multiprocessing does


class MapResult(AsyncResult):
    """The result of ``map_async``/``starmap_async``: a list, in input order.
    The first chunk to fail makes the whole result fail at once."""

    def __init__(self, pool, callback=None, error_callback=None):
        super().__init__(pool, callback, error_callback)
        self._chunks: dict[int, list] = {}
        self._count: int | None = None

    def _chunk_done(self, index: int, ok: bool, value) -> None:
        if not ok:
            self._set(False, value)
            return
        self._chunks[index] = value
        self._finish_if_complete()

    def _input_done(self, count: int) -> None:
        self._count = count
        self._finish_if_complete()

    def _finish_if_complete(self) -> None:
        if self._count is not None and len(self._chunks) == self._count:
            chunks, self._chunks = self._chunks, {}
            self._set(True, [v for i in range(self._count) for v in chunks[i]])


class IMapIterator:
    """The results of ``imap`` (in input order) or ``imap_unordered`` (as they
    finish), one value per ``next``. A failed chunk raises its exception in
    place of its values; iteration then goes on with the next chunk."""

    def __init__(self, pool, ordered: bool):
        self._pool = pool
        self._ordered = ordered
        self._cond = threading.Condition()
        self._items: deque = deque()          # (ok, value), ready to hand out
        self._early: dict[int, tuple] = {}    # ordered: chunks that came before their turn
        self._next_chunk = 0                  # ordered: the chunk whose turn it is
        self._delivered = 0                   # chunks moved into _items
        self._count: int | None = None        # chunks in all, once the input ran out
        self._ended = False                   # terminated: nothing more will come

    def __iter__(self):
        return self

    def next(self, timeout: float | None = None):
        """The next value; TimeoutError if none comes within ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._ended or self._delivered == self._count:
                    raise StopIteration
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError
                self._cond.wait(left)
            ok, value = self._items.popleft()
        if ok:
            return value
        raise value

    __next__ = next

    # -- filled by the dispatcher thread --------------------------------------
    def _chunk_done(self, index: int, ok: bool, value) -> None:
        with self._cond:
            if not self._ordered:
                self._deliver(ok, value)
            else:
                self._early[index] = (ok, value)
                while self._next_chunk in self._early:
                    self._deliver(*self._early.pop(self._next_chunk))
                    self._next_chunk += 1
            self._cond.notify_all()

    def _deliver(self, ok: bool, value) -> None:
        if ok:
            self._items.extend((True, v) for v in value)
        else:
            self._items.append((False, value))
        self._delivered += 1
        if self._delivered == self._count:
            self._pool = None

    def _input_done(self, count: int) -> None:
        with self._cond:
            self._count = count
            if self._delivered == count:
                self._pool = None
            self._cond.notify_all()

    def _fail(self, error: BaseException) -> None:
        with self._cond:
            self._pool = None
            self._early.clear()
            self._items.append((False, error))
            self._ended = True
            self._cond.notify_all()
