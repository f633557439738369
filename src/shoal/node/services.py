"""The node's services: requests a client (the driver in process, or a
worker's CALL message) makes and waits on: get, wait, alloc, cancel,
generator_next, resources.

Part of ``Node`` (a base class of it): these methods use the node's tables
and run under ``node.lock``. A service is ``_svc_<op>(client, request_id,
reply, *args)`` and answers by calling ``reply(ok, value)``, at once or
later (a get waits for its objects). ``client`` is None for the driver.
"""
from __future__ import annotations

import threading

from ..exceptions import GetTimeoutError, TaskCancelledError
from ..scheduler.resources import _UNIT
from ..scheduler.task import ACTOR_CALL, object_id_for
from ..transport import messages as m
from .records import QUEUED, RUNNING, WAITING_DEPS, TaskRecord

DRIVER = None


class Request:
    """A blocking get/wait from a client, answered when enough objects are ready."""
    __slots__ = ("ids", "need", "reply", "client", "done", "callback")

    def __init__(self, ids, need, reply, client):
        self.ids = ids
        self.need = need
        self.reply = reply
        self.client = client
        self.done = False
        self.callback = None



class NodeServices:
    def request(self, op: str, *args, timeout: float | None = None):
        """A service call from the driver's own threads; blocks for the reply."""
        latch = threading.Lock()
        latch.acquire()
        box = []

        def reply(ok, value):
            box.append((ok, value))
            latch.release()
        with self.lock:
            freed: list = []
            self._apply_local_deltas(freed)
            self._service(DRIVER, id(latch), op, args, reply)
            self._free(freed)
        if not latch.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            with self.lock:
                self._forget_request(DRIVER, id(latch))
            if box:   # answered while we gave up
                return _unwrap(box.pop())
            raise GetTimeoutError(f"{op} timed out after {timeout} s")
        return _unwrap(box.pop())

    def _service(self, client, request_id, op, args, reply) -> None:
        try:
            fn = getattr(self, "_svc_" + op)
        except AttributeError:
            reply(False, ValueError(f"unknown node service {op!r}"))
            return
        try:
            fn(client, request_id, reply, *args)
        except Exception as e:  # a bad request must not break the node; the caller sees why
            reply(False, e)

    def _forget_request(self, client, request_id) -> None:
        req = self.requests.pop((client, request_id), None)
        if req is not None and not req.done:
            req.done = True
            for oid in req.ids:
                self.objects.remove_waiter(oid, req.callback)
            req.callback = None
            self._unblock(client)

    def _svc_forget(self, client, request_id, reply, target_id) -> None:
        self._forget_request(client, target_id)

    def _svc_get(self, client, request_id, reply, ids) -> None:
        self._await_objects(client, request_id, ids, len(ids), reply, values=True)

    def _svc_wait(self, client, request_id, reply, ids, num_returns) -> None:
        self._await_objects(client, request_id, ids, num_returns, reply, values=False)

    def _await_objects(self, client, request_id, ids, need, reply, values: bool) -> None:
        """Answer once ``need`` of ``ids`` are ready. A get (``values``) of
        several objects answers as soon as one of them is an error, with
        that error alone (a one-item list; Ray's get fails fast too)."""
        objects = self.objects
        missing = []
        fail_fast = values and len(ids) > 1
        for oid in ids:
            e = objects.get(oid)
            if values and e is not None and e.value is not None:
                kind = e.value[0]
                if kind == m.ERROR and fail_fast:
                    reply(True, self._ship_many([oid], client))
                    return
                if kind == m.SPILLED:
                    self._restore_or_rebuild(oid, e)  # a lost copy is rebuilt: then we wait
                elif kind == m.REMOTE:
                    self._fetch(oid, e)               # on another node: we wait for the bytes
            if e is None or e.value is None:
                if objects.is_lost(oid):
                    # held only by refs: record the loss as its value, so every
                    # reader gets the same explanation
                    objects.add_ref(oid, 0)
                    objects.set_value(oid, self._lost_value(oid))
                    continue
                missing.append(oid)
        ready = len(ids) - len(missing)

        def answer():
            if values:
                self._reply_values(client, ids, reply)
            else:
                reply(True, [oid for oid in ids if (e := objects.get(oid)) is not None
                             and e.value is not None])
        if ready >= need:
            answer()
            return
        req = Request(ids, need - ready, reply, client)

        def on_ready(oid, entry, req=req):
            if req.done:
                return
            req.need -= 1
            failed = fail_fast and entry.value[0] == m.ERROR
            if req.need <= 0 or failed:
                req.done = True
                self.requests.pop((client, request_id), None)
                for other in missing:
                    objects.remove_waiter(other, req.callback)
                req.callback = None     # no cycle: shipped values (leases) must not wait for gc
                self._unblock(client)
                if failed:
                    reply(True, self._ship_many([oid], client))
                else:
                    answer()
        req.callback = on_ready
        self.requests[(client, request_id)] = req
        for oid in missing:
            objects.add_waiter(oid, on_ready)
        self._block(client)

    def _block(self, w) -> None:
        """A task worker waits in get/wait: lend its CPU to others and take
        back the tasks queued behind the waiting one, which could otherwise
        be the very tasks it waits for."""
        if w is DRIVER:
            return
        w.blocked += 1
        if w.blocked == 1 and w.actor is None and w.lease is not None:
            w.lease.pool.release(w.lease)
            queued = [tid for tid in list(w.inflight)[1:] if tid not in w.revoking]
            if queued:
                w.revoking.update(queued)
                self._send(w, (m.REVOKE, queued))
            self._schedule()

    def _unblock(self, w) -> None:
        if w is DRIVER or w.blocked == 0:
            return
        w.blocked -= 1
        if w.blocked == 0 and w.actor is None and w.lease is not None:
            w.lease.pool.force_acquire(w.lease)

    def _svc_put(self, client, request_id, reply, oid, value) -> None:
        freed: list = []
        self._store(oid, value, freed)
        self._set_owner(oid, client)
        self._free(freed)
        reply(True, None)

    def _svc_generator_next(self, client, request_id, reply, task_id, index) -> None:
        gen = self.generators.get(task_id)
        if gen is None:
            reply(True, None)
            return
        if index > gen.released:
            # the consumer holds its own refs to the items before ``index`` now
            freed: list = []
            for i in range(gen.released, min(index, gen.count)):
                self.objects.unpin(object_id_for(task_id, i + 2), freed)
            gen.released = index
            self._free(freed)
        if index < gen.count:
            reply(True, object_id_for(task_id, index + 2))
        elif gen.done:
            reply(True, None)
        else:
            gen.waiters.append((index, reply, client))
            self._block(client)

    def _wake_generator(self, rec: TaskRecord) -> None:
        gen = rec.gen
        keep = []
        for waiter in gen.waiters:
            index, reply, client = waiter
            if index < gen.count:
                self._unblock(client)
                reply(True, object_id_for(rec.spec.task_id, index + 2))
            elif gen.done:
                self._unblock(client)
                reply(True, None)
            else:
                keep.append(waiter)
        gen.waiters = keep

    def _svc_cancel(self, client, request_id, reply, task_id, force, recursive) -> None:
        self._cancel(task_id, force, recursive)
        reply(True, None)

    def _cancel(self, task_id: bytes, force: bool, recursive: bool) -> None:
        rec = self.tasks.get(task_id)
        if rec is None or rec.cancelled:
            return
        spec = rec.spec
        if force and spec.kind == ACTOR_CALL:
            raise ValueError("force=True is not supported for actor tasks; use shoal.kill() "
                             "on the actor instead")
        rec.cancelled = True
        if recursive and rec.children:
            for child in rec.children:
                self._cancel(child, force, recursive)
        err = self._error_value(TaskCancelledError(f"task {spec.name} was cancelled"))
        if rec.state in (WAITING_DEPS, QUEUED):
            if spec.kind == ACTOR_CALL:
                actor = self.actors.get(spec.actor_id)
                if actor is not None and rec in actor.queue:
                    actor.queue.remove(rec)
            self._finish(rec, err)
        elif rec.state == RUNNING and getattr(rec.worker, "is_peer", False):
            self._peer_call(rec.worker, "cancel", (task_id, force, recursive), _ignore)
        elif rec.state == RUNNING:
            w = rec.worker
            started = next(iter(w.inflight), None) == task_id or w.actor is not None
            if force and started:
                w.proc.kill()
            else:
                self._send(w, (m.CANCEL, task_id))
                self._nudge(w)

    def _svc_resources(self, client, request_id, reply, which) -> None:
        r = self.resources
        if which == "total":
            out = r.as_floats(r.total)
        else:
            out = {k: max(0.0, v) for k, v in r.as_floats(r.available).items()}
            out = {k: v for k, v in out.items() if v > 0}
        if "memory" not in out and which == "total":
            pass
        out["object_store_memory"] = float(self.allocator.capacity if which == "total"
                                           else self.allocator.capacity - self.allocator.used_bytes)
        out[f"node:{self.node_id.hex()[:8]}"] = 1.0
        if self.view:                       # a cluster: every node's, as last heard
            for nid, info in self.view.items():
                if info.driver:
                    continue
                for k, v in (info.total if which == "total" else info.free).items():
                    if v > 0:
                        out[k] = out.get(k, 0.0) + v / _UNIT
                out[f"node:{nid.hex()[:8]}"] = 1.0
        reply(True, out)

    def _svc_nodes(self, client, request_id, reply) -> None:
        r = self.resources
        me = getattr(self, "peer_address", ("127.0.0.1",))[0]
        rows = [] if not self.runs_tasks else [{
            "NodeID": self.node_id.hex(), "Alive": True, "NodeManagerAddress": me,
            "Resources": r.as_floats(r.total), "alive": True,
        }]
        for nid, info in (self.view or {}).items():
            if not info.driver:
                rows.append({"NodeID": nid.hex(), "Alive": True,
                             "NodeManagerAddress": info.address[0],
                             "Resources": {k: v / _UNIT for k, v in info.total.items()},
                             "alive": True})
        reply(True, rows)


def _ignore(ok, value) -> None:
    pass


def _unwrap(result):
    ok, value = result
    if ok:
        return value
    raise value
