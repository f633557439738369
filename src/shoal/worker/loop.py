"""The worker's loop: receive work from the node and run it.

A task worker runs tasks one at a time on its main thread, in the order the
node sent them (the node may queue several, see ``pipeline_depth``). An
actor's worker does the same unless the actor is threaded
(``max_concurrency`` > 1: a thread pool) or async (an asyncio loop on its own
thread); those switch the process to reader mode (see core/worker.py).
"""
from __future__ import annotations

import asyncio
import inspect
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from ..exceptions import ActorDiedError, TaskCancelledError
from ..node.logs import LABEL_MARKER
from ..runtime_env import restore_env
from ..scheduler.task import ACTOR_CALL, ACTOR_CREATE, TaskSpec
from ..transport import messages as m
from ..transport.framing import ConnectionClosed
from ..util.metrics import _pending as user_metrics, report as report_metrics
from .execute import (ActorExit, finish_error, finish_ok, is_streaming, prepare, run_streaming,
                      run_streaming_async)


class WorkerLoop:
    def __init__(self, core, streams: tuple):
        self.core = core
        self.streams = streams       # this process's TaggedStreams (worker/output.py)
        self.queue: deque = deque()
        self.functions: dict = {}
        self.blobs: dict = {}        # function id -> pickled code, until first used
        self.exiting = False
        self.current = None          # task id running on the main thread
        self.cancelled: set = set()
        self.pool = None             # threaded actor
        self.aloop = None            # async actor
        self.semaphore = None
        self.async_tasks: dict = {}
        self.wakeup = threading.Condition()
        self.label = None
        self.cuda_default = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.gpus_set = None
        core.on_message = self.on_message
        core.on_nudge = self._deferred_nudge
        core.cancelled = lambda: self.current is not None and self.current in self.cancelled
        signal.signal(signal.SIGUSR1, self._on_nudge)

    # -- receiving -------------------------------------------------------------
    def on_message(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == m.EXECUTE:
            if msg[2] is not None:
                # keep the code now: the node sends it once per worker, and this
                # task may be revoked before it runs
                self.blobs[msg[1][2]] = msg[2]
            if self.aloop is not None:
                fut = asyncio.run_coroutine_threadsafe(self._execute_async(msg), self.aloop)
                self.async_tasks[msg[1][0]] = fut
            elif self.pool is not None:
                self.pool.submit(self._execute_logged, msg)
            else:
                self._enqueue(msg)
        elif kind == m.CANCEL:
            self._cancel(msg[1])
        elif kind == m.REVOKE:
            wanted = set(msg[1])
            given = []
            for q in list(self.queue):
                if q[1][0] in wanted:
                    self.queue.remove(q)      # in place: run() may be between check and pop
                    given.append(q[1][0])
            self.core.send((m.REVOKED, given))
        elif kind == m.NODE_ID:
            self.core.node_id = msg[1]
            os.environ["SHOAL_NODE_ID"] = msg[1].hex()
        elif kind == m.EXIT:
            self.exiting = True
            with self.wakeup:
                self.wakeup.notify_all()

    def _enqueue(self, msg) -> None:
        if self.core.reader is None:
            self.queue.append(msg)
        else:
            with self.wakeup:
                self.queue.append(msg)
                self.wakeup.notify()

    def run(self) -> None:
        core = self.core
        try:
            while not self.exiting:
                try:
                    msg = self.queue.popleft()
                except IndexError:
                    msg = None
                if msg is not None:
                    self._execute_logged(msg)
                    continue
                core.flush_refs()
                if core.reader is None:
                    core.pump()
                else:
                    with self.wakeup:
                        if not self.queue and not self.exiting:
                            # wake now and then: calls finishing on other threads drop
                            # refs that must reach the node even while no call comes
                            self.wakeup.wait(0.1)
        except ConnectionClosed:
            pass
        finally:
            sys.stdout.flush()
            sys.stderr.flush()

    # -- running ---------------------------------------------------------------
    def _execute_logged(self, msg) -> None:
        try:
            self._execute(msg)
        except ConnectionClosed:
            self.exiting = True
        except BaseException:   # a bug in shoal itself: say so, keep the worker alive
            traceback.print_exc()

    def _execute(self, msg) -> None:     # hot: every task and actor call
        core = self.core
        spec = p = None
        started = time.time()
        try:
            p = prepare(core, self.functions, self.blobs, msg)
            spec = p.spec
            self._set_label(spec)
            self._set_gpus(msg[4])
            self.current = spec.task_id
            if spec.kind == ACTOR_CREATE:
                self._configure_actor(spec)
            if core.nudged:
                core.read_available()
                if spec.task_id in self.cancelled:
                    raise KeyboardInterrupt
            core.user_code = core.reader is None
            try:
                if core.nudged and core.user_code:
                    # a nudge that came after the check above, before user_code
                    # was set, only set ``nudged``: read it now, not after the task
                    self._deferred_nudge()
                result = p.fn(*p.args, **p.kwargs)
                if is_streaming(spec):
                    done = run_streaming(core, spec, result)
                else:
                    done = None
            finally:
                core.user_code = False
            if done is None:
                done = finish_ok(core, spec, result)
            if spec.kind == ACTOR_CREATE:
                self._start_concurrency(spec)
        except ActorExit:
            done = self._actor_exit(spec)
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt) and spec and spec.task_id in self.cancelled:
                e = TaskCancelledError(f"task {spec.name} was cancelled")
            if spec is None:
                spec = TaskSpec.from_wire(msg[1])
            done = finish_error(core, spec, e)
        finally:
            self.current = None
            if p is not None and p.env_saved is not None:     # a task's runtime_env env_vars
                restore_env(p.env_saved)
            sys.stdout.flush()
            sys.stderr.flush()
        self.cancelled.discard(spec.task_id)
        if user_metrics.changes:      # what the task recorded reaches the node before DONE
            report_metrics(core)
        core.send(done + (started, time.time()))

    async def _execute_async(self, msg) -> None:
        core = self.core
        spec = TaskSpec.from_wire(msg[1])
        started = 0.0
        try:
            async with self.semaphore:
                started = time.time()
                p = prepare(core, self.functions, self.blobs, msg)
                self._set_label(spec)
                result = p.fn(*p.args, **p.kwargs)
                if inspect.isasyncgen(result):
                    done = await run_streaming_async(core, spec, result)
                else:
                    if inspect.isawaitable(result):
                        result = await result
                    if is_streaming(spec):
                        done = run_streaming(core, spec, result)
                    else:
                        done = finish_ok(core, spec, result)
        except ActorExit:
            done = self._actor_exit(spec)
        except asyncio.CancelledError:
            done = finish_error(core, spec, TaskCancelledError(f"task {spec.name} was cancelled"))
        except BaseException as e:
            done = finish_error(core, spec, e)
        finally:
            self.async_tasks.pop(spec.task_id, None)
        if user_metrics.changes:
            report_metrics(core)
        core.send(done + ((started, time.time()) if started else (0.0, 0.0)))

    def _actor_exit(self, spec) -> tuple:
        self.core.send((m.ACTOR_EXIT, self.core.actor_id))
        self.exiting = True
        with self.wakeup:
            self.wakeup.notify_all()
        # as in Ray, the call that exited reports the actor's end
        return finish_error(self.core, spec, ActorDiedError(
            "The actor exited by calling exit_actor().", self.core.actor_id.hex()))

    # -- actors ------------------------------------------------------------------
    def _configure_actor(self, spec) -> None:
        self.core.actor_id = spec.task_id
        self.core.was_restarted = bool((spec.options or {}).get("restarted"))

    def _start_concurrency(self, spec) -> None:
        opts = spec.options or {}
        is_async = opts.get("is_async", False)
        limit = opts.get("max_concurrency") or (1000 if is_async else 1)
        if is_async:
            self.aloop = asyncio.new_event_loop()
            ready = threading.Event()

            def run_loop():
                asyncio.set_event_loop(self.aloop)
                self.semaphore = asyncio.Semaphore(limit)
                ready.set()
                self.aloop.run_forever()
            threading.Thread(target=run_loop, name="shoal-actor-asyncio", daemon=True).start()
            ready.wait()
        elif limit > 1:
            self.pool = ThreadPoolExecutor(limit, thread_name_prefix="shoal-actor")
        else:
            return
        self.core.start_reader()

    # -- cancellation --------------------------------------------------------------
    def _cancel(self, task_id: bytes) -> None:
        for q in self.queue:
            if q[1][0] == task_id:
                self.queue.remove(q)
                spec = TaskSpec.from_wire(q[1])
                self.core.send(finish_error(self.core, spec, TaskCancelledError(
                    f"task {spec.name} was cancelled")) + (0.0, 0.0))
                return
        fut = self.async_tasks.get(task_id)
        if fut is not None:
            fut.cancel()
            return
        if self.current == task_id:
            self.cancelled.add(task_id)

    def _on_nudge(self, signum, frame) -> None:
        """SIGUSR1: the node sent something that cannot wait until the running
        task ends (CANCEL, or REVOKE to take back queued tasks). Read it now,
        unless the main thread is mid-read or mid-send (then right after)."""
        core = self.core
        if core.reader is not None:
            return      # the reader thread sees every message as it comes
        if not core.user_code:
            core.nudged = True     # read when control is back in user code
            return
        self._deferred_nudge()

    def _deferred_nudge(self) -> None:
        """Read what the nudge announced; called only where the main thread is
        about to run user code again, so raising here interrupts the task."""
        core = self.core
        while True:
            core.user_code = False
            try:
                core.read_available()
            finally:
                core.user_code = True
            # a nudge that came while we read (answering a REVOKE sends) only
            # set ``nudged``: its message may not have been there yet
            if not core.nudged:
                break
        if self.current is not None and self.current in self.cancelled:
            raise KeyboardInterrupt

    # -- process state -------------------------------------------------------------
    def _set_label(self, spec) -> None:     # hot: every task
        label = spec.name.split(".")[0] if spec.kind in (ACTOR_CALL, ACTOR_CREATE) else spec.name
        out, err = self.streams
        if label != self.label:
            self.label = out.label = err.label = label
            sys.stdout.flush()
            sys.stderr.flush()
            marker = LABEL_MARKER + label.encode() + b"\n"
            os.write(1, marker)
            os.write(2, marker)

    def _set_gpus(self, assigned) -> None:
        gpu_ids = assigned[1] if assigned else None
        if gpu_ids == self.gpus_set:
            return
        self.gpus_set = gpu_ids
        if gpu_ids:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)
        elif self.cuda_default is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = self.cuda_default
