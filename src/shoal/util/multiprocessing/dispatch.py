"""The pool's worker processes (one actor each) and the thread that feeds them.

``Dispatcher`` owns the actors and the queue of jobs; only its thread
touches them. Other threads talk to it through one event queue: a new job,
close, terminate, and "chunk done" events, which a ref's future posts when
its call finishes (that callback may run on shoal's own threads, so it does
nothing but post). Each actor runs one chunk at a time and gets the next
chunk as soon as it reports, so work spreads over the actors like
multiprocessing's shared task queue does, and a job's input is read only as
fast as the actors take it (imap over an endless generator is fine).

An actor that dies mid-chunk fails that chunk with ActorDiedError and is
replaced; so is one that reached ``maxtasksperchild`` chunks.
"""
from __future__ import annotations

import os
import queue
import threading
import traceback
from collections import deque
from typing import Callable, Iterator

import shoal
from shoal.exceptions import ActorDiedError

from .results import user_error


class PoolWorker:
    """One worker process of a Pool. ``initializer`` runs once, here."""

    def __init__(self, initializer, initargs):
        if initializer is not None:
            initializer(*initargs)

    def ping(self) -> int:
        return os.getpid()

    def run_chunk(self, func, calls: list) -> list:
        return [func(*args, **kwargs) for args, kwargs in calls]


PoolWorkerClass = shoal.remote(PoolWorker)


class Job:
    """A caller's request: its sink (results.py) and an iterator of chunks,
    each ``(func, [(args, kwargs), ...])``."""

    def __init__(self, sink, chunks: Iterator):
        self.sink = sink
        self.chunks = chunks
        self.taken = 0       # chunks handed to actors so far


class _Slot:
    """One actor and the chunk it runs (at most one)."""

    def __init__(self, actor):
        self.actor = actor
        self.chunks_started = 0
        self.running = None   # (sink, chunk index, ref) while a chunk is out


class Dispatcher:
    def __init__(self, actors: list, start_actor: Callable, maxtasksperchild: int | None):
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._slots = [_Slot(a) for a in actors]
        self._start_actor = start_actor
        self._maxtasksperchild = maxtasksperchild
        self._jobs: deque[Job] = deque()
        self._closing = False
        # a daemon, so a pool nobody closed cannot keep the interpreter alive
        self._thread = threading.Thread(target=self._run, name="shoal-pool-dispatch",
                                        daemon=True)

    # -- any thread ----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def add(self, job: Job) -> None:
        self._events.put(("job", job))

    def close(self) -> None:
        """Finish every job, then stop the actors and the thread."""
        self._events.put(("close",))

    def terminate(self) -> None:
        """Stop the actors now; unfinished results fail."""
        self._events.put(("terminate",))

    def join(self) -> None:
        if threading.current_thread() is not self._thread:   # e.g. terminate() in a callback
            self._thread.join()

    # -- the dispatcher thread -----------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                event = self._events.get()
                kind = event[0]
                if kind == "job":
                    self._jobs.append(event[1])
                elif kind == "done":
                    self._on_chunk_done(event[1], event[2])
                elif kind == "close":
                    self._closing = True
                elif kind == "terminate":
                    self._stop(RuntimeError("the pool was terminated before this result "
                                            "was ready"))
                    return
                self._start_chunks()
                if self._closing and not self._jobs and not self._busy():
                    self._stop(None)
                    return
        except BaseException as e:   # a bug here must fail the results, not hang them
            traceback.print_exc()
            self._stop(RuntimeError(f"the pool's dispatcher failed: {e!r}"))

    def _busy(self) -> bool:
        return any(slot.running is not None for slot in self._slots)

    def _start_chunks(self) -> None:
        for slot in self._slots:
            while slot.running is None:
                chunk = self._next_chunk()
                if chunk is None:
                    return
                job, index, func, calls = chunk
                try:
                    ref = slot.actor.run_chunk.remote(func, calls)
                except Exception as e:   # e.g. an argument that cannot be pickled
                    job.sink._chunk_done(index, False, e)
                    continue
                slot.running = (job.sink, index, ref)   # the ref keeps the result alive
                slot.chunks_started += 1
                ref.future().add_done_callback(
                    lambda future, slot=slot: self._events.put(("done", slot, future)))

    def _next_chunk(self):
        """(job, index, func, calls) of the next chunk to run, or None."""
        while self._jobs:
            job = self._jobs[0]
            try:
                func, calls = next(job.chunks)
            except StopIteration:
                self._jobs.popleft()
                job.sink._input_done(job.taken)
                continue
            except Exception as e:   # the caller's input iterable raised
                self._jobs.popleft()
                job.sink._chunk_done(job.taken, False, e)
                job.sink._input_done(job.taken + 1)
                continue
            index = job.taken
            job.taken += 1
            return job, index, func, calls
        return None

    def _on_chunk_done(self, slot: _Slot, future) -> None:
        sink, index, _ = slot.running
        slot.running = None
        try:
            ok, value = True, future.result()
        except BaseException as e:
            ok, value = False, user_error(e)
        sink._chunk_done(index, ok, value)
        died = not ok and isinstance(value, ActorDiedError)
        spent = self._maxtasksperchild is not None and \
            slot.chunks_started >= self._maxtasksperchild
        if died or spent:
            _kill(slot.actor)
            slot.actor = self._start_actor()
            slot.chunks_started = 0

    def _stop(self, error: BaseException | None) -> None:
        """Kill every actor; with ``error``, fail every result not yet complete."""
        unfinished = {}      # id -> sink: a map's chunks may be on several actors
        for slot in self._slots:
            if slot.running is not None:
                sink = slot.running[0]
                unfinished[id(sink)] = sink
            slot.running = None
            _kill(slot.actor)
        while self._jobs:
            sink = self._jobs.popleft().sink
            unfinished[id(sink)] = sink
        if error is not None:
            for sink in unfinished.values():
                sink._fail(error)


def _kill(actor) -> None:
    if not shoal.is_initialized():
        return      # the actors went with the cluster; the API would start a new one
    try:
        shoal.kill(actor)
    except ValueError:
        pass        # "no such actor": this cluster was started after the pool's
