"""``Pool``: multiprocessing.Pool's interface over a set of shoal actors.

Each of the pool's processes is an actor (dispatch.py) that runs the
initializer once, so per-process state set up there is there for every call
that process runs. Calls go out in chunks; results come back through the
objects in results.py. The pool object itself stays in the process that
made it, as with multiprocessing.
"""
from __future__ import annotations

from itertools import islice
from typing import Callable, Iterable, Iterator

import shoal

from .dispatch import Dispatcher, Job, PoolWorkerClass
from .results import AsyncResult, IMapIterator, MapResult

_RUN, _CLOSE, _TERMINATE = "running", "closed", "terminated"


class Pool:
    """A pool of ``processes`` worker actors (default: the cluster's CPUs).

    ``maxtasksperchild`` replaces a worker after that many chunks.
    ``ray_address`` is passed to ``shoal.init`` if shoal is not running yet;
    ``ray_remote_args`` are options for the worker actors (default
    ``{"num_cpus": 1}``: each worker holds a CPU while the pool lives).
    ``context`` is accepted for compatibility and ignored."""

    _state = _TERMINATE    # until __init__ succeeds (__del__ reads it)
    _dispatcher = None

    def __init__(self, processes: int | None = None, initializer: Callable | None = None,
                 initargs: Iterable = (), maxtasksperchild: int | None = None, context=None,
                 ray_address: str | None = None, ray_remote_args: dict | None = None):
        if processes is not None and (not isinstance(processes, int) or processes < 1):
            raise ValueError(f"Number of processes must be at least 1, got {processes!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (
                not isinstance(maxtasksperchild, int) or maxtasksperchild < 1):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if not shoal.is_initialized():
            shoal.init(address=ray_address, num_cpus=processes)
        remote_args = {"num_cpus": 1, **(ray_remote_args or {})}
        processes = _pool_size(processes, remote_args["num_cpus"] or 0)
        worker_class = PoolWorkerClass.options(**remote_args)
        initargs = tuple(initargs)

        def start_actor():
            return worker_class.remote(initializer, initargs)
        actors = [start_actor() for _ in range(processes)]
        try:
            # fail here, not on the first call, if the initializer raises
            shoal.get([a.ping.remote() for a in actors])
        except BaseException:
            for a in actors:
                shoal.kill(a)
            raise
        self._processes = processes
        self._dispatcher = Dispatcher(actors, start_actor, maxtasksperchild)
        self._dispatcher.start()
        self._state = _RUN

    # -- one call ----------------------------------------------------------------
    def apply(self, func: Callable, args: Iterable = (), kwds: dict | None = None):
        """``func(*args, **kwds)`` in a worker; blocks until it returns."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable, args: Iterable = (), kwds: dict | None = None,
                    callback: Callable | None = None,
                    error_callback: Callable | None = None) -> AsyncResult:
        self._check_running()
        result = AsyncResult(self, callback, error_callback)
        calls = [(tuple(args), dict(kwds or {}))]
        self._dispatcher.add(Job(result, iter([(func, calls)])))
        return result

    # -- many calls, one result -----------------------------------------------------
    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        """``[func(x) for x in iterable]``, computed in the workers."""
        return self._map_async(func, iterable, chunksize, False, None, None).get()

    def map_async(self, func: Callable, iterable: Iterable, chunksize: int | None = None,
                  callback: Callable | None = None,
                  error_callback: Callable | None = None) -> MapResult:
        return self._map_async(func, iterable, chunksize, False, callback, error_callback)

    def starmap(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        """``[func(*args) for args in iterable]``, computed in the workers."""
        return self._map_async(func, iterable, chunksize, True, None, None).get()

    def starmap_async(self, func: Callable, iterable: Iterable, chunksize: int | None = None,
                      callback: Callable | None = None,
                      error_callback: Callable | None = None) -> MapResult:
        return self._map_async(func, iterable, chunksize, True, callback, error_callback)

    def _map_async(self, func, iterable, chunksize, star, callback, error_callback):
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        if chunksize is None:
            # multiprocessing's rule: about four chunks per process
            chunksize, extra = divmod(len(iterable), self._processes * 4)
            chunksize = max(1, chunksize + bool(extra))
        _check_chunksize(chunksize)
        result = MapResult(self, callback, error_callback)
        self._dispatcher.add(Job(result, _chunks(func, iter(iterable), chunksize, star)))
        return result

    # -- many calls, results as they come ---------------------------------------------
    def imap(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> IMapIterator:
        """An iterator of ``func(x)`` in input order; ``iterable`` is read as
        workers are free, so it may be long or endless."""
        return self._imap(func, iterable, chunksize, ordered=True)

    def imap_unordered(self, func: Callable, iterable: Iterable,
                       chunksize: int = 1) -> IMapIterator:
        """Like ``imap``, but each result comes as soon as it is ready."""
        return self._imap(func, iterable, chunksize, ordered=False)

    def _imap(self, func, iterable, chunksize, ordered):
        self._check_running()
        _check_chunksize(chunksize)
        items = iter(iterable)
        results = IMapIterator(self, ordered)
        self._dispatcher.add(Job(results, _chunks(func, items, chunksize, False)))
        return results

    # -- lifecycle --------------------------------------------------------------------
    def close(self) -> None:
        """Take no more work; the workers exit once what was submitted is done."""
        if self._state == _RUN:
            self._state = _CLOSE
            self._dispatcher.close()

    def terminate(self) -> None:
        """Stop the workers now. Results not ready yet fail with RuntimeError."""
        if self._state != _TERMINATE and self._dispatcher is not None:
            self._state = _TERMINATE
            self._dispatcher.terminate()
            self._dispatcher.join()

    def join(self) -> None:
        """Wait for the workers to exit; call ``close`` or ``terminate`` first."""
        if self._state == _RUN:
            raise ValueError("Pool is still running")
        self._dispatcher.join()

    def _check_running(self) -> None:
        if self._state != _RUN:
            raise ValueError("Pool not running")

    def __enter__(self) -> "Pool":
        self._check_running()
        return self

    def __exit__(self, *exc) -> None:
        self.terminate()

    def __reduce__(self):
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __del__(self):
        # a pool dropped while running stops its workers (without waiting)
        if self._state == _RUN and self._dispatcher is not None:
            self._state = _TERMINATE
            self._dispatcher.terminate()

    def __repr__(self) -> str:
        return f"<shoal.util.multiprocessing.Pool state={self._state} " \
               f"processes={getattr(self, '_processes', None)}>"


def _pool_size(processes: int | None, cpus_each: float) -> int:
    """How many workers to start: ``processes``, or as many as the cluster's
    CPUs hold; more than they hold is refused (they could never all start)."""
    cpus = shoal.cluster_resources().get("CPU", 0)
    if processes is None:
        processes = max(1, int(cpus // cpus_each) if cpus_each else int(cpus))
    if processes * cpus_each > cpus:
        raise ValueError(f"Tried to start a pool with {processes} processes of {cpus_each:g} "
                         f"CPU each, but there are only {cpus:g} CPUs in the cluster")
    return processes


def _check_chunksize(chunksize) -> None:
    if not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")


def _chunks(func: Callable, items: Iterator, chunksize: int, star: bool):
    """``(func, [(args, kwargs), ...])`` per chunk; reads ``items`` lazily
    (on the dispatcher thread)."""
    while True:
        batch = list(islice(items, chunksize))
        if not batch:
            return
        if star:
            yield func, [(tuple(args), {}) for args in batch]
        else:
            yield func, [((x,), {}) for x in batch]
