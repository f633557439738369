"""A worker's runtime: requests to the node over the worker's socket.

Two ways to read the socket, decided per process:
- serial (the default): the main thread executes tasks and, when a task
  waits for a reply (get, wait, alloc), reads the socket itself until the
  reply comes, queueing whatever else arrives;
- reader: a dedicated thread reads and routes replies to waiting threads;
  used by threaded and async actors and once anything asks for a future.
Outgoing messages carry this process's ref changes: increments before the
message and decrements after it, so a ref inside a message never reaches
zero at the node before the message that holds it arrives.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import select
import threading
import time

from ..exceptions import GetTimeoutError
from ..transport import messages as m
from .base import Core


class WorkerCore(Core):
    def __init__(self, conn, arena, job_id, node_id, namespace, worker_id: bytes):
        super().__init__(arena, job_id, node_id, namespace)
        self.conn = conn
        self.worker_id = worker_id
        self._send_lock = threading.Lock()
        self._request_ids = itertools.count(1)
        self.replies: dict = {}            # serial mode: request_id -> (ok, value)
        self.waiting: dict = {}            # reader mode: request_id -> Future
        self.forgotten: set = set()
        self.reader = None
        self.on_message = None             # the worker loop's handler for non-replies
        # Serial mode: a SIGUSR1 nudge may read the socket only while the main
        # thread runs user code; anywhere in shoal's own code (mid-read,
        # mid-send, between a check and a read) it just sets ``nudged``, and
        # the read happens when control returns to user code (``_leave``).
        self.user_code = False
        self.nudged = False
        self.on_nudge = None
        self.cancelled = None              # () -> True when the running task was cancelled
        # serial mode, several threads: one reads at a time (``_reading``), the
        # others wait on ``_turn`` and find their replies routed for them
        self._turn = threading.Condition()
        self._reading = False
        self._main = threading.main_thread()

    # -- sending -------------------------------------------------------------
    def _enter(self) -> bool:
        if threading.current_thread() is not self._main:
            return False    # only the main thread runs the task and takes nudges
        prev = self.user_code
        self.user_code = False
        return prev

    def _leave(self, prev: bool) -> None:
        if threading.current_thread() is not self._main:
            return
        self.user_code = prev
        if prev and self.nudged:
            self.on_nudge()

    def send(self, message: tuple) -> None:
        prev = self._enter()
        try:
            with self._send_lock:
                self.conn.send_many(self._ref_messages(message))
        finally:
            self._leave(prev)

    def _ref_messages(self, message) -> list:
        log = self.ref_log
        if not log:
            return [message] if message is not None else []
        incs: dict = {}
        decs: dict = {}
        pop = log.popleft
        try:
            while True:
                oid, d = pop()
                if d > 0:
                    incs[oid] = incs.get(oid, 0) + 1
                else:
                    decs[oid] = decs.get(oid, 0) + 1
        except IndexError:
            pass
        out = []
        if incs:
            out.append((m.REFS, list(incs.items()), ()))
        if message is not None:
            out.append(message)
        if decs:
            out.append((m.REFS, (), list(decs.items())))
        return out

    def flush_refs(self) -> None:
        if self.ref_log:
            self.send(None)

    # -- store ---------------------------------------------------------------
    def alloc(self, size: int) -> int:
        return self.request("alloc", size)

    def free_alloc(self, offset: int) -> None:
        self.send((m.CALL, 0, "free_alloc", (offset,)))

    def store(self, object_id: bytes, value: tuple) -> None:
        self.send((m.PUT, object_id, value))

    def fetch(self, ids: list, timeout):
        return self.request("get", ids, timeout=timeout)

    def wait(self, ids: list, num_returns: int, timeout):
        try:
            return self.request("wait", ids, num_returns, timeout=timeout)
        except GetTimeoutError:
            return self.request("wait", ids, 0)

    def send_metrics(self, updates: list) -> None:
        self.send((m.METRICS, updates))

    def send_spec(self, spec) -> None:
        self.send((m.SUBMIT, spec.to_wire()))

    def send_export(self, function_id: bytes, blob: bytes) -> None:
        self.send((m.EXPORT, function_id, blob))

    # -- requests ------------------------------------------------------------
    def request(self, op: str, *args, timeout=None):
        prev = self._enter()
        try:
            return self._request(op, args, timeout)
        finally:
            self._leave(prev)

    def _request(self, op: str, args: tuple, timeout):
        rid = next(self._request_ids)
        if self.reader is not None:
            fut = self.waiting[rid] = concurrent.futures.Future()
            self.send((m.CALL, rid, op, args))
            try:
                ok, value = fut.result(timeout)
            except concurrent.futures.TimeoutError:
                self._give_up(rid, op, timeout)
            finally:
                self.waiting.pop(rid, None)
        else:
            self.send((m.CALL, rid, op, args))
            deadline = None if timeout is None else time.monotonic() + timeout
            while rid not in self.replies:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self._give_up(rid, op, timeout)
                self.pump(left)
                if (self.cancelled is not None and threading.current_thread() is self._main
                        and self.cancelled()):
                    # the task waiting here was cancelled: stop waiting, raise in it
                    self.forgotten.add(rid)
                    self.send((m.CALL, 0, "forget", (rid,)))
                    raise KeyboardInterrupt
            ok, value = self.replies.pop(rid)
        if ok:
            return value
        raise value

    def _give_up(self, rid, op, timeout):
        self.forgotten.add(rid)
        self.send((m.CALL, 0, "forget", (rid,)))
        raise GetTimeoutError(f"{op} timed out after {timeout} s")

    def request_future(self, op: str, *args) -> concurrent.futures.Future:
        self.start_reader()
        rid = next(self._request_ids)
        fut = self.waiting[rid] = concurrent.futures.Future()
        self.send((m.CALL, rid, op, args))
        return fut

    def pump(self, timeout=None) -> None:
        """Serial mode: read the socket once (up to ``timeout``) and route.
        Never called from user code, so no nudge reads the socket meanwhile."""
        with self._turn:
            if self._reading:    # another thread reads: wait for it to route
                self._turn.wait(timeout)
                return
            self._reading = True
        try:
            if timeout is not None:
                r, _, _ = select.select([self.conn.sock], [], [], max(0.0, timeout))
                if not r:
                    return
            self.nudged = False
            for msg in self.conn.read_messages():
                self.route(msg)
        finally:
            with self._turn:
                self._reading = False
                self._turn.notify_all()

    def read_available(self) -> None:
        """Serial mode: route whatever has arrived, without blocking."""
        with self._turn:
            if self._reading:     # another thread reads; it routes what came
                return
            self._reading = True
        self.nudged = False
        sock = self.conn.sock
        sock.setblocking(False)
        try:
            msgs = self.conn.read_messages()
            for msg in msgs:
                self.route(msg)
        finally:
            sock.setblocking(True)
            with self._turn:
                self._reading = False
                self._turn.notify_all()

    def route(self, msg: tuple) -> None:
        if msg[0] == m.REPLY:
            _, rid, ok, value = msg
            if rid in self.forgotten:
                self.forgotten.discard(rid)
                return
            if self.reader is not None:
                fut = self.waiting.pop(rid, None)
                if fut is not None:
                    fut.set_result((ok, value))
                else:
                    self.replies[rid] = (ok, value)
            else:
                self.replies[rid] = (ok, value)
        else:
            self.on_message(msg)

    def start_reader(self) -> None:
        """Switch to reader mode for the rest of this process's life."""
        if self.reader is not None:
            return
        from ..transport.framing import ConnectionClosed

        def read_forever():
            try:
                while True:
                    for msg in self.conn.read_messages():
                        self.route(msg)
            except ConnectionClosed:
                self.on_message((m.EXIT,))
        self.reader = threading.Thread(target=read_forever, name="shoal-worker-reader",
                                       daemon=True)
        # replies that arrived in serial mode stay in self.replies
        self.reader.start()

    # -- futures ---------------------------------------------------------------
    def get_future(self, ref) -> concurrent.futures.Future:
        oid = ref.id
        inner = self.request_future("get", [oid])
        out: concurrent.futures.Future = concurrent.futures.Future()

        def done(f):
            ok, value = f.result()
            try:
                if not ok:
                    raise value
                out.set_result(self.decode_value(oid, value[0]))
            except BaseException as e:
                out.set_exception(e)
        inner.add_done_callback(done)
        return out

    def generator_next(self, task_id: bytes, index: int, timeout=None):
        return self.request("generator_next", task_id, index, timeout=timeout)

    def generator_next_future(self, task_id: bytes, index: int):
        inner = self.request_future("generator_next", task_id, index)
        out: concurrent.futures.Future = concurrent.futures.Future()

        def done(f):
            ok, value = f.result()
            if ok:
                out.set_result(value)
            else:
                out.set_exception(value)
        inner.add_done_callback(done)
        return out
