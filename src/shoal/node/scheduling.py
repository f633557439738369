"""Submitting and scheduling tasks: from a spec to a worker.

A task's path: ``submit`` records it (its return entries, pins on its
arguments, its placement), waits for its arguments (``_wait_deps``), then
joins its queue (``_ready``). Queues are per (submitter, resource shape):
``_schedule`` drains them, taking resources (the node's or a placement
group bundle's) and an idle worker (a lease), or pipelining small tasks onto
a busy worker of the same queue; with several submitters waiting they take
turns. ``_execute`` ships the arguments (restoring spilled ones, waiting
for lost ones to be rebuilt) and sends EXECUTE.

Part of ``Node`` (a base class of it), under ``node.lock``.
"""
from __future__ import annotations

import time
from collections import deque

from ..exceptions import (ActorDiedError, InfeasibleTaskError, NodeDiedError,
                          ObjectStoreFullError, TaskUnschedulableError)
from ..object_store.table import DRIVER_OWNER
from ..scheduler.resources import NodeResources
from ..scheduler.task import ACTOR_CALL, ACTOR_CREATE, STREAMING, TASK, TaskSpec, object_id_for
from ..transport import messages as m
from .actors import DEAD, ActorRecord
from .placement import GONE
from .records import (HERE, NODE_GONE, QUEUED, RUNNING, WAIT, WAITING_DEPS, GeneratorState,
                      TaskRecord)
from .services import DRIVER
from .workers import BUSY


class NodeScheduling:
    def submit(self, spec: TaskSpec, client=DRIVER) -> None:
        with self.lock:
            freed: list = []
            self._apply_local_deltas(freed)
            self._submit(spec, client)
            self._free(freed)

    def _submit(self, spec: TaskSpec, client) -> None:
        request = NodeResources.quantize(spec.resources) if spec.resources else {}
        # queued per submitter and shape: submitters take turns (_schedule_pass)
        rec = TaskRecord(spec, request, (spec.parent_id,) + tuple(sorted(request.items())))
        tid = spec.task_id
        self.tasks[tid] = rec
        objects = self.objects
        owner = DRIVER_OWNER if client is DRIVER else client
        for rid in spec.return_ids():
            objects.expect(rid, spec.name, owner)
        if spec.num_returns == STREAMING:
            rec.gen = self.generators[tid] = GeneratorState()
        for _, dep in spec.deps:
            objects.pin(dep)
        for inner in spec.contained:
            objects.pin(inner)
        parent = None
        if spec.parent_id is not None:
            parent = self.tasks.get(spec.parent_id)
            if parent is not None:
                if parent.children is None:
                    parent.children = []
                parent.children.append(tid)
        if spec.kind == ACTOR_CALL:
            actor = self.actors.get(spec.actor_id)
            if (actor is None or (actor.borrowed and actor.state == DEAD)) and self.peers:
                actor = self._borrowed_actor(spec.actor_id) or actor
            objects.pin(object_id_for(spec.actor_id, 1))
            claim = self.claims.get(spec.actor_id) if actor is None else None
            if claim is not None:
                # a named actor whose creator has its handle but has not
                # submitted it yet (get_if_exists raced): queue for it
                self._wait_deps(rec)
                claim.calls.append(rec)
                return
            if actor is None or actor.state == DEAD:
                self._finish(rec, self._error_value(ActorDiedError(
                    actor.death_message() if actor else "The actor does not exist.",
                    spec.actor_id.hex())))
                return
            self._wait_deps(rec)
            actor.queue.append(rec)
            self._pump_actor(actor)
            return
        err = None
        if spec.options is not None or (parent is not None and parent.placement is not None) \
                or (parent is not None and parent.spec.kind == ACTOR_CALL):
            rec.placement, err = self._resolve_strategy(spec, parent)
            if rec.placement is not None:
                rec.key = rec.key[:1] + (rec.placement[:2],) + rec.key[1:]
        if self.view is not None:
            rec.route = self._route_for(spec, client, request)
        if spec.kind == ACTOR_CREATE:
            actor = ActorRecord(spec, request)
            actor.placement = rec.placement
            self.actors[spec.task_id] = actor
            claim = self.claims.pop(tid, None)
            if claim is not None:
                actor.queue.extend(claim.calls)
                for link, reply in claim.handle_requests:
                    reply(True, self._export(link, [actor.handle_id]))
            if actor.detached:
                objects.pin(actor.handle_id)
        if rec.route == HERE and not self.runs_tasks:
            err = TaskUnschedulableError(
                f"{spec.name} cannot run: streaming generators (num_returns=\"streaming\" or "
                f"dynamic) run on the node that submits them, and a driver on a machine "
                f"without a node runs nothing; submit it from a task, or run the driver on "
                f"a node's machine")
        if err is None and rec.placement is None:
            reason = self.resources.infeasible_reason(request)
            if reason is not None and self.view is not None and rec.route != HERE:
                reason = self._infeasible_in_cluster(rec, reason)
            if reason is not None:
                err = InfeasibleTaskError(
                    f"{spec.name} cannot be scheduled: {reason}. Lower its resource request or "
                    f"start shoal with more (shoal.init(num_cpus=..., num_gpus=..., resources=...)).")
        if err is not None:
            if self.fail_infeasible or not isinstance(err, InfeasibleTaskError):
                if spec.kind == ACTOR_CREATE:
                    self._actor_dead(self.actors[tid], str(err))
                self._finish(rec, self._error_value(err))
                return
        self._wait_deps(rec)
        if rec.deps_left == 0:
            self._ready(rec)

    def _wait_deps(self, rec: TaskRecord) -> None:
        objects = self.objects
        for _, dep in rec.spec.deps:
            e = objects.get(dep)
            if e is None or e.value is None:
                if objects.is_lost(dep):
                    objects.set_value(dep, self._lost_value(dep))
                    continue
                rec.deps_left += 1
                objects.add_waiter(dep, lambda oid, e, rec=rec: self._dep_ready(rec))

    def _dep_ready(self, rec: TaskRecord) -> None:
        rec.deps_left -= 1
        if rec.deps_left == 0 and rec.state == WAITING_DEPS:
            if rec.spec.kind == ACTOR_CALL:
                actor = self.actors.get(rec.spec.actor_id)
                if actor is not None:
                    self._pump_actor(actor)
            else:
                self._ready(rec)

    def _ready(self, rec: TaskRecord) -> None:
        rec.state = QUEUED
        rec.ready_at = time.time()
        if rec.spec.kind == ACTOR_CREATE:
            self.pending_actors.append(self.actors[rec.spec.task_id])
        else:
            q = self.queues.get(rec.key)
            if q is None:
                q = self.queues[rec.key] = deque()
            q.append(rec)
        self._schedule()

    def _schedule(self) -> None:
        """Start what can start. Re-entrant calls (starting a task can submit
        another: a lineage rebuild) only ask the running pass for another round."""
        if self.scheduling:
            self.schedule_again = True
            return
        self.scheduling = True
        try:
            self.schedule_again = True
            while self.schedule_again:
                self.schedule_again = False
                self._schedule_pass()
        finally:
            self.scheduling = False

    def _schedule_pass(self) -> None:
        if self.pending_pgs or self.lost_bundles:
            self._place_pending_pgs()
        if self.pending_actors:
            self._schedule_actors()
        queues = self.queues
        if len(queues) == 1 or len({key[0] for key in queues}) == 1:
            # one submitter: drain its queues in turn (the hot path)
            for key, q in list(queues.items()):
                while q and self._dispatch_one(key, q, True):
                    pass
                if not q and queues.get(key) is q:
                    del queues[key]
            return
        # several submitters (or shapes): one task each per round, so that a
        # long backlog from one cannot hold back the others; no pipelining
        # onto busy workers then, which would keep them leased to one submitter
        progress = True
        while progress:
            progress = False
            for key, q in list(queues.items()):
                if q and self._dispatch_one(key, q, False):
                    progress = True
                    if queues.get(key) is q:
                        queues[key] = queues.pop(key)    # served: to the back of the line
                if not q and queues.get(key) is q:
                    del queues[key]

    def _dispatch_one(self, key, q: deque, pipeline: bool) -> bool:
        """Start (or settle) the task at the head of ``q``; False when it
        must wait for resources or a worker."""
        rec = q[0]
        if rec.state != QUEUED:
            q.popleft()
            return True
        if rec.placement is None:
            if rec.route != HERE and (rec.route is not None or self.peers):
                link = self._forward_first(rec)
                if link is WAIT:
                    return False
                if link is NODE_GONE:
                    q.popleft()
                    self._finish(rec, self._error_value(NodeDiedError(
                        f"{rec.spec.name} has a hard NodeAffinitySchedulingStrategy for node "
                        f"{rec.route.hex()}, which died")))
                    return True
                if link is not None:
                    q.popleft()
                    self._forward(link, rec)
                    return True
            assignment = self.resources.try_acquire(rec.request) if self.runs_tasks else None
            if assignment is None and self.peers and rec.route != HERE:
                link = self._forward_overflow(rec)
                if link is not None:
                    q.popleft()
                    self._forward(link, rec)
                    return True
        else:
            if self.peers:
                link = self._pg_forward_target(rec)
                if link is not None:
                    q.popleft()
                    self._forward(link, rec)
                    return True
            assignment = self._acquire(rec.placement, rec.request)
            if assignment is GONE:
                q.popleft()
                self._finish(rec, self._pg_removed_value(rec))
                return True
        if assignment is not None:
            w = self.idle.pop() if self.idle else None
            if w is not None:
                q.popleft()
                w.state = BUSY
                w.lease, w.lease_key = assignment, key
                self.leased.setdefault(key, []).append(w)
                self._execute(w, rec)
                return True
            # resources are free, only a worker is missing: wait for one
            # rather than queue behind a busy worker
            assignment.pool.release(assignment)
            free_cpus = assignment.pool.available.get("CPU", 0) // 10000
            self._want_workers(min(len(q), max(1, free_cpus)))
            return False
        if not pipeline:
            return False
        w = self._pipeline_target(key)
        if w is None or not self._pipelinable(rec):
            return False
        q.popleft()
        self._execute(w, rec)
        return True

    def _pipelinable(self, rec: TaskRecord) -> bool:
        """Only tasks with small arguments wait on a busy worker: shipping
        shared-memory arguments maps them, and mapped objects cannot be
        spilled while the task waits its turn."""
        if not rec.spec.deps:
            return True
        entries = self.objects.entries
        for _, dep in rec.spec.deps:
            value = entries[dep].value
            if value is None or value[0] != m.INLINE:
                return False
        return True

    def _pipeline_target(self, key):
        best = None
        for w in self.leased.get(key, ()):
            n = len(w.inflight)
            if not w.blocked and n < self.pipeline_depth and (best is None or n < len(best.inflight)):
                best = w
        return best

    def _want_workers(self, backlog: int) -> None:
        """Have ``backlog`` workers starting (at most one per CPU at a time)."""
        limit = self.target_pool
        if self.starting < min(backlog, limit):
            self.loop.call_soon(self._grow_pool, min(backlog, limit) - self.starting)
            self.starting = min(backlog, limit)

    def _execute(self, w, rec: TaskRecord) -> None:
        spec = rec.spec
        rec.state = RUNNING
        rec.worker = w
        rec.started_at = time.monotonic()    # the memory monitor kills the newest first
        w.inflight[spec.task_id] = rec
        dep_values = self._ship_args(w, rec)
        if dep_values is None:
            return
        fid = spec.function_id
        blob = None
        if fid is not None and fid not in w.functions:
            blob = self.functions.get(fid)
            w.functions.add(fid)
        lease = w.lease
        assigned = None
        if lease is not None and (lease.gpu_ids or rec.request):
            assigned = (lease.describe(), lease.gpu_ids)
        elif w.actor is not None and w.actor.assignment is not None:
            a = w.actor.assignment
            assigned = (a.describe(), a.gpu_ids)
        self._send(w, (m.EXECUTE, spec.to_wire(), blob, dep_values, assigned))

    def _ship_args(self, w, rec: TaskRecord) -> list | None:
        """The task's argument values for worker ``w``; None when one of them
        failed (the task then fails with that error, without running)."""
        deps = rec.spec.deps
        if not deps:
            return deps
        entries = self.objects.entries
        for _, dep in deps:
            e = entries[dep]
            if e.value is not None:
                if e.value[0] == m.SPILLED:
                    self._restore_or_rebuild(dep, e)
                elif e.value[0] == m.REMOTE:
                    self._fetch(dep, e)
        rebuilding = {dep for _, dep in deps if entries[dep].value is None}
        if rebuilding:           # a lost argument is being made again: wait for it
            w.inflight.pop(rec.spec.task_id)
            rec.state = WAITING_DEPS
            rec.deps_left = len(rebuilding)
            for dep in rebuilding:
                self.objects.add_waiter(dep, lambda oid, e, rec=rec: self._dep_ready(rec))
            if rec.spec.kind == ACTOR_CALL:
                w.actor.queue.appendleft(rec)
            else:
                rec.worker = None
                self._worker_maybe_idle(w)
            return None
        failed = next((v for _, dep in deps if (v := entries[dep].value)[0] == m.ERROR), None)
        out = []
        wait = False
        if failed is None:
            for key, dep in deps:
                value = entries[dep].value
                if value[0] != m.INLINE:
                    try:
                        value = self._ship(dep, value, w, raise_full=True)
                    except ObjectStoreFullError as err:
                        wait = rec.spec.kind == TASK and getattr(err, "waitable", False)
                        value = self._error_value(err)
                    if value[0] == m.ERROR:     # a spilled copy could not be restored
                        failed = value
                        break
                out.append((key, value))
        if failed is None:
            return out
        for (_, value), (_, dep) in zip(out, deps):
            if value[0] == m.SHM:
                self._unship(dep, w)
        w.inflight.pop(rec.spec.task_id)
        if wait:     # no room to read an argument back yet: wait until there is
            rec.state = WAITING_DEPS
            rec.worker = None
            deadline = self.memory_deadlines.setdefault(
                rec.spec.task_id, time.monotonic() + self.store_full_timeout)
            self._wait_for_memory(("task", rec), deadline)
        else:
            self._finish(rec, failed)
        self._worker_maybe_idle(w)
        return None

    def _requeue(self, rec: TaskRecord) -> None:
        rec.state = QUEUED
        rec.worker = None
        q = self.queues.get(rec.key)
        if q is None:
            q = self.queues[rec.key] = deque()
        q.appendleft(rec)
