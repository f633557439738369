"""The driver's runtime: the node lives in this process, so calls are direct.

The driver's ref log *is* the node's ``local_deltas``: the node applies it
under its lock before anything that could free an object.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import os

from ..exceptions import GetTimeoutError, ObjectStoreFullError
from ..node.services import DRIVER
from ..object_store.table import DRIVER_OWNER
from ..transport.messages import SPILLED
from .base import Core

_request_ids = itertools.count(1 << 40)


class DriverCore(Core):
    is_driver = True

    def __init__(self, node, namespace: str):
        super().__init__(node.arena, node.job_id, node.node_id, namespace)
        self.node = node
        node.local_deltas = self.ref_log
        node.driver_pid = os.getpid()

    # -- store -------------------------------------------------------------
    def alloc(self, size: int) -> int:
        node = self.node
        try:
            with node.lock:
                return node._alloc(size)
        except ObjectStoreFullError as err:
            if not getattr(err, "waitable", False):
                raise
        return node.request("alloc", size)      # waits (bounded) for room

    def free_alloc(self, offset: int) -> None:
        with self.node.lock:
            self.node.allocator.free(offset)

    def store(self, object_id: bytes, value: tuple) -> None:
        node = self.node
        with node.lock:
            freed: list = []
            node._apply_local_deltas(freed)
            node._store(object_id, value, freed)
            node._set_owner(object_id, DRIVER_OWNER)
            node._free(freed)

    def fetch(self, ids: list, timeout):
        node = self.node
        with node.lock:
            entries = node.objects.entries
            for oid in ids:
                e = entries.get(oid)
                if e is None or e.value is None or e.value[0] >= SPILLED:   # spilled, remote
                    break
            else:
                return node._ship_many(ids, None)
        return node.request("get", ids, timeout=timeout)

    def wait(self, ids: list, num_returns: int, timeout):
        try:
            return self.node.request("wait", ids, num_returns, timeout=timeout)
        except GetTimeoutError:
            return self.node.request("wait", ids, 0)

    # -- submit --------------------------------------------------------------
    def send_spec(self, spec) -> None:
        self.node.submit(spec)

    def send_metrics(self, updates: list) -> None:
        with self.node.lock:
            self.node.metrics.record(updates)

    def send_export(self, function_id: bytes, blob: bytes) -> None:
        with self.node.lock:
            self.node.functions[function_id] = blob

    def request(self, op: str, *args, timeout=None):
        return self.node.request(op, *args, timeout=timeout)

    def _service_future(self, op, args, decode) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def reply(ok, value):
            if not ok:
                fut.set_exception(value)
                return
            try:
                fut.set_result(decode(value))
            except BaseException as e:  # the remote error, re-raised for the awaiting side
                fut.set_exception(e)
        node = self.node
        with node.lock:
            freed: list = []
            node._apply_local_deltas(freed)
            node._service(DRIVER, next(_request_ids), op, args, reply)
            node._free(freed)
        return fut

    def get_future(self, ref) -> concurrent.futures.Future:
        oid = ref.id
        return self._service_future("get", ([oid],), lambda vs: self.decode_value(oid, vs[0]))

    def generator_next(self, task_id: bytes, index: int, timeout=None):
        return self.node.request("generator_next", task_id, index, timeout=timeout)

    def generator_next_future(self, task_id: bytes, index: int):
        return self._service_future("generator_next", (task_id, index), lambda v: v)

    agent = None        # the Agent joining this driver's node to a cluster (core/client.py)
    doors = None        # a local cluster's driver socket and dashboard (cluster/local.py)
    agent_thread = None

    def shutdown(self) -> None:
        if self.doors is not None:          # the local cluster's socket and dashboard
            self.doors.stop()
        if self.agent is not None:
            self.agent.stop_event.set()
            self.agent_thread.join(timeout=10)
        self.node.stop()


