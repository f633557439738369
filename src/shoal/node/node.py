"""The node: worker processes, object table, local scheduling, actors.

Threads and locks: the node's state is guarded by ``self.lock``. The driver's
threads call the public methods (``submit``, ``request``...) directly; the
loop thread (``loop.py``) reads worker sockets and handles their messages
under the same lock. Nothing here blocks while holding the lock: output to a
worker is queued on its non-blocking connection and flushed by the loop.

Who frees what: the object table decides when an object is unreferenced
(``table.py``); ``_free`` then returns its shared memory to the allocator
and drops the pins its value held on other objects.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from collections import OrderedDict, deque

from .. import config
from ..exceptions import (ActorDiedError, InfeasibleTaskError, ObjectLostError,
                          ObjectStoreFullError, ShoalError,
                          TaskCancelledError, WorkerCrashedError)
from ..object_store.allocator import Allocator
from ..object_store.arena import Arena
from ..object_store.spill import SpillDirectory
from ..object_store.table import ObjectTable
from ..scheduler.resources import NodeResources
from ..scheduler.task import (ACTOR_CALL, ACTOR_CREATE, STREAMING, TASK, TaskSpec,
                              object_id_for)
from ..serialization import pack_inline, serialize
from ..transport import messages as m
from ..transport.framing import ConnectionClosed
from .actors import ActorRecord, NodeActors, DEAD
from .lineage import NodeLineage
from .memory import NodeMemory
from .placement import GONE, NodePlacement
from .logs import StreamRelay
from .loop import EventLoop
from .memory_monitor import MemoryMonitor
from .records import FINISHED, QUEUED, RUNNING, WAITING_DEPS, GeneratorState, TaskRecord
from .services import DRIVER, NodeServices
from .workers import BUSY, IDLE, STARTING, spawn_worker


class Node(NodeServices, NodeActors, NodePlacement, NodeMemory, NodeLineage):
    """One machine's runtime. Its methods are split by concern over five
    files: this one (tasks, scheduling, workers, messages, shutdown),
    services.py (requests clients wait on), actors.py (actor lifecycle),
    placement.py (placement groups and scheduling strategies) and memory.py
    (shared memory, spilling, what is shipped to whom)."""

    def __init__(self, resources: dict[str, float], object_store_memory: int,
                 log_to_driver: bool, namespace: str, job_id: bytes, node_id: bytes):
        self.lock = threading.RLock()
        self.node_id = node_id
        self.job_id = job_id
        self.namespace = namespace
        self.total_resources = dict(resources)
        self.resources = NodeResources(resources)
        self.arena = Arena.create(object_store_memory)
        self.allocator = Allocator(object_store_memory)
        self.resident: OrderedDict = OrderedDict()   # ids in shared memory, LRU first
        self.memory_waiters: deque = deque()          # allocations/tasks waiting for room
        self.memory_retry_pending = False
        self.store_full_timeout = config.get("object_store_full_timeout_s")
        self.spill = (SpillDirectory(config.get("object_spilling_directory"))
                      if config.get("object_spilling") else None)
        self.objects = ObjectTable()
        self.functions: dict[bytes, bytes] = {}
        self.tasks: dict[bytes, TaskRecord] = {}
        self.queues: dict[tuple, deque] = {}
        self.leased: dict[tuple, list] = {}
        self.workers: dict[bytes, object] = {}
        self.idle: list = []
        self.starting = 0
        self.actors: dict[bytes, ActorRecord] = {}
        self.pending_actors: deque = deque()
        self.named: dict[tuple, bytes] = {}
        self.placement_groups: dict = {}          # pg_id -> PlacementGroupRecord
        self.pg_names: dict[tuple, bytes] = {}    # (namespace, name) -> pg_id
        self.pending_pgs: list = []
        self.removed_pgs: deque = deque()
        self.scheduling = False                   # _schedule is running (see there)
        self.schedule_again = False
        self.generators: dict[bytes, GeneratorState] = {}   # until the consumer drops it
        self.local_deltas: deque = deque()        # the driver's (object_id, +1/-1)
        self.requests: dict = {}                  # (client, request_id) -> Request
        self.log_to_driver = log_to_driver
        self.inline_threshold = config.get("inline_threshold")
        self.pipeline_depth = config.get("pipeline_depth")
        self.fail_infeasible = config.get("fail_infeasible")
        self.idle_timeout = config.get("idle_worker_timeout_s")
        self.target_pool = max(1, int(resources.get("CPU", 1)))
        self.stopped = False
        self.procs: list = []                     # every worker process started, for reaping
        self.relays: list = []                    # output relays of live workers
        self.worker_env = {"SHOAL_JOB_ID": job_id.hex(), "SHOAL_NODE_ID": node_id.hex(),
                           "SHOAL_NAMESPACE": namespace}
        self.loop = EventLoop()
        self.loop.start()
        self.starting = self.target_pool
        self.loop.call_soon(self._grow_pool, self.target_pool)
        self.loop.call_later(0.1, self._drain_driver_refs)
        self.memory_monitor = MemoryMonitor.start_for(self)   # None when turned off

    def _drain_driver_refs(self) -> None:
        """Refs the driver dropped while it makes no calls (computing, idle)
        are applied here, so their objects and actors are freed anyway."""
        if self.local_deltas:
            with self.lock:
                freed: list = []
                self._apply_local_deltas(freed)
                self._free(freed)
        if not self.stopped:
            self.loop.call_later(0.1, self._drain_driver_refs)

    # ------------------------------------------------------------------ refs
    def _apply_local_deltas(self, freed: list) -> None:
        """Apply the driver's ref changes, in the order they happened."""
        pop = self.local_deltas.popleft
        objects = self.objects
        try:
            while True:
                oid, d = pop()
                if d > 0:
                    objects.add_ref(oid, d)
                else:
                    objects.remove_ref(oid, -d, freed)
        except IndexError:
            pass

    def _free(self, freed: list) -> None:
        """Release what freed objects held; may free more in turn."""
        objects = self.objects
        while freed:
            oid, e = freed.pop()
            value = e.value
            if value is not None:
                if value[0] == m.SHM or value[0] == m.SPILLED:
                    self._release_value(oid, value)
                for inner in value[2]:
                    objects.unpin(inner, freed)
            if oid[12] & 0x80:      # a mapped count reached zero: that object may spill now
                self._memory_released()
                continue
            if objects.entries.get(oid) is e:    # evicted: lineage keeps the entry
                e.value = None
                e.expected = False
                e.shm_offset = None
            elif e.lineage is not None:
                lineage = e.lineage
                lineage.live -= 1
                if lineage.live == 0:
                    for _, dep in lineage.spec.deps:
                        objects.lineage_unpin(dep, freed)
            if oid[12:] == b"\0\0\0\1":   # a task's first return: an actor handle or a generator
                actor = self.actors.get(oid[:12])
                if actor is not None:
                    self._actor_out_of_scope(actor)
                gen = self.generators.pop(oid[:12], None)
                if gen is not None:
                    for i in range(gen.released, gen.count):
                        self.objects.unpin(object_id_for(oid[:12], i + 2), freed)
                    gen.released = gen.count

    def _discard_value(self, value: tuple) -> None:
        if value[0] == m.SHM:
            self.allocator.free(value[1][0])

    # ------------------------------------------------------------ submitting
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
        for rid in spec.return_ids():
            objects.expect(rid, spec.name)
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
            objects.pin(object_id_for(spec.actor_id, 1))
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
        if spec.kind == ACTOR_CREATE:
            actor = ActorRecord(spec, request)
            actor.placement = rec.placement
            self.actors[spec.task_id] = actor
            if actor.detached:
                objects.pin(actor.handle_id)
        if err is None and rec.placement is None:
            reason = self.resources.infeasible_reason(request)
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
        if rec.spec.kind == ACTOR_CREATE:
            self.pending_actors.append(self.actors[rec.spec.task_id])
        else:
            q = self.queues.get(rec.key)
            if q is None:
                q = self.queues[rec.key] = deque()
            q.append(rec)
        self._schedule()

    # ------------------------------------------------------------ scheduling
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
        if self.pending_pgs:
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
            assignment = self.resources.try_acquire(rec.request)
        else:
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
            if e.value is not None and e.value[0] == m.SPILLED:
                self._restore_or_rebuild(dep, e)
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
            self._wait_for_memory(("task", rec))
        else:
            self._finish(rec, failed)
        self._worker_maybe_idle(w)
        return None

    def _send(self, w, message: tuple) -> None:
        if w.conn.queue(message):
            self.loop.call_soon(self._watch_writable, w)

    def _watch_writable(self, w) -> None:
        self.loop.set_writer(w.conn.fileno(), self._on_writable, w, True)

    def _on_writable(self, w) -> None:
        with self.lock:
            left = w.conn.flush()
        if not left:
            self.loop.set_writer(w.conn.fileno(), None, w, False)

    def _nudge(self, w) -> None:
        """Make a busy worker read its socket now (see WorkerLoop._on_nudge)."""
        try:
            os.kill(w.pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass

    def _worker_maybe_idle(self, w) -> None:
        if w.inflight or w.actor is not None or w.state != BUSY:
            return
        if w.lease is not None:
            if not w.blocked:
                w.lease.pool.release(w.lease)
            self.leased[w.lease_key].remove(w)
            w.lease = w.lease_key = None
        self._make_idle(w)
        self._steal_for_idle()

    def _make_idle(self, w) -> None:
        w.state = IDLE
        self.idle.append(w)
        if len(self.idle) > self.target_pool and not w.retire_pending:
            w.retire_pending = True
            self.loop.call_later(self.idle_timeout, self._retire_if_idle, w)

    def _steal_for_idle(self) -> None:
        """Idle workers and nothing queued: take back tasks waiting behind a
        running one on another worker (they may wait behind a long task)."""
        if not self.idle or any(self.queues.values()):
            return
        for workers in self.leased.values():
            for w in workers:
                if len(w.inflight) > 1 and not w.blocked:
                    queued = [t for t in list(w.inflight)[1:] if t not in w.revoking]
                    if queued:
                        w.revoking.update(queued)
                        self._send(w, (m.REVOKE, queued))
                        self._nudge(w)

    def _retire_if_idle(self, w) -> None:
        w.retire_pending = False
        with self.lock:
            if w.state == IDLE and w in self.idle and len(self.idle) > self.target_pool:
                self.idle.remove(w)
                w.state = "retiring"
                self._send(w, (m.EXIT,))

    # ---------------------------------------------------------- worker pool
    def _grow_pool(self, n: int) -> None:
        """Start ``n`` workers (loop thread only: see loop.py on PDEATHSIG)."""
        for _ in range(n):
            if self.stopped:
                return
            try:
                w = spawn_worker(os.urandom(8), self.arena.fd, self.arena.size, self.worker_env)
            except OSError as e:
                with self.lock:
                    self.starting = max(0, self.starting - 1)
                self.loop.on_error and self.loop.on_error(e)
                return
            with self.lock:
                self.workers[w.worker_id] = w
                self.procs.append(w.proc)
                if self.stopped:
                    w.conn.queue((m.EXIT,))
            self.loop.add_reader(w.conn.fileno(), self._on_readable, w)
            for fd, to_err in ((w.proc.stdout.fileno(), False), (w.proc.stderr.fileno(), True)):
                os.set_blocking(fd, False)
                relay = StreamRelay(fd, w.pid, to_err, self.log_to_driver)
                self.relays.append(relay)
                w.relays.append(relay)
                self.loop.add_reader(fd, self._on_output, (w, relay))
            self.loop.call_later(config.get("worker_start_timeout_s"), self._check_started, w)

    def _check_started(self, w) -> None:
        if w.state == STARTING and w.proc.poll() is None:
            w.proc.kill()   # never connected; its EOF cleans up

    def _on_output(self, arg) -> None:
        w, relay = arg
        if relay.read() is False:
            self.loop.remove(relay.fd)
            w.out_pipes -= 1
            with self.lock:
                if relay in self.relays:
                    self.relays.remove(relay)

    # ------------------------------------------------------------- messages
    def _on_readable(self, w) -> None:
        try:
            msgs = w.conn.read_messages()
        except ConnectionClosed:
            self._on_worker_lost(w)
            return
        if not msgs:
            return
        with self.lock:
            freed: list = []
            self._apply_local_deltas(freed)
            for msg in msgs:
                self._handlers[msg[0]](self, w, msg, freed)
            self._free(freed)

    def _h_hello(self, w, msg, freed) -> None:
        if msg[1] != m.PROTOCOL_VERSION:
            w.proc.kill()
            return
        self.starting = max(0, self.starting - 1)
        if self.stopped:
            return
        self._make_idle(w)
        self._schedule()
        self._steal_for_idle()

    def _h_submit(self, w, msg, freed) -> None:
        self._submit(TaskSpec.from_wire(msg[1]), w)

    def _h_export(self, w, msg, freed) -> None:
        self.functions[msg[1]] = msg[2]

    def _h_refs(self, w, msg, freed) -> None:
        objects, held = self.objects, w.held
        for oid, n in msg[1]:
            objects.add_ref(oid, n)
            held[oid] = held.get(oid, 0) + n
        for oid, n in msg[2]:
            left = held.get(oid, 0) - n
            if left > 0:
                held[oid] = left
            else:
                held.pop(oid, None)
            objects.remove_ref(oid, n, freed)

    def _h_put(self, w, msg, freed) -> None:
        self._claim(w, msg[2])
        self._store(msg[1], msg[2], freed)

    def _h_done(self, w, msg, freed) -> None:
        _, task_id, results, retryable = msg
        if w.allocs:
            for _, value in results:
                self._claim(w, value)
        rec = w.inflight.pop(task_id, None)
        if w.revoking:
            w.revoking.discard(task_id)
        if rec is None:
            for _, value in results:   # revoked or cancelled meanwhile: not wanted
                self._discard_value(value)
            return
        spec = rec.spec
        if spec.kind == ACTOR_CREATE:
            self._actor_created(w.actor, rec, results, freed)
            return
        if retryable and not rec.cancelled and rec.retries_left != 0:
            rec.retries_left -= 1
            for _, value in results:
                self._discard_value(value)
            if spec.kind == ACTOR_CALL:
                w.actor.queue.appendleft(rec)
                rec.state = WAITING_DEPS
                self._pump_actor(w.actor)
            else:
                self._requeue(rec)
                self._worker_maybe_idle(w)
                self._schedule()
            return
        self._finish_with(rec, results, freed)
        if spec.kind == ACTOR_CALL:
            self._pump_actor(w.actor)
        else:
            self._worker_maybe_idle(w)
            self._schedule()

    def _claim(self, w, value: tuple) -> None:
        """A worker reported the shared memory it allocated for ``value``."""
        if value[0] == m.SHM:
            w.allocs.discard(value[1][0])

    def _h_gen_item(self, w, msg, freed) -> None:
        _, task_id, index, value = msg
        self._claim(w, value)
        rec = self.tasks.get(task_id)
        if rec is None or rec.gen is None:
            self._discard_value(value)
            return
        gen = rec.gen
        oid = object_id_for(task_id, index + 2)
        e = self.objects.get(oid)
        if (e is not None and e.value is not None) or index < gen.released:
            self._discard_value(value)   # a retry yields it again; the first stands
            return
        if task_id in self.generators:
            self.objects.pin(oid)      # held for the consumer until it asks for the next
        self.objects.expect(oid)
        self._store(oid, value, freed)
        if index >= gen.count:
            gen.count = index + 1
        self._wake_generator(rec)

    def _h_call(self, w, msg, freed) -> None:
        _, request_id, op, args = msg

        def reply(ok, value, w=w, request_id=request_id):
            self._send(w, (m.REPLY, request_id, ok, value))
        self._service(w, request_id, op, args, reply)

    def _h_revoked(self, w, msg, freed) -> None:
        for tid in msg[1]:
            rec = w.inflight.pop(tid, None)
            w.revoking.discard(tid)
            if rec is not None:
                self._requeue(rec)
        self._worker_maybe_idle(w)
        self._schedule()

    def _h_actor_exit(self, w, msg, freed) -> None:
        actor = w.actor
        if actor is not None:
            actor.no_restart = True
            actor.exit_reason = "The actor exited by calling exit_actor()."

    _handlers = {m.HELLO: _h_hello, m.SUBMIT: _h_submit, m.EXPORT: _h_export, m.REFS: _h_refs,
                 m.PUT: _h_put, m.DONE: _h_done, m.GEN_ITEM: _h_gen_item, m.CALL: _h_call,
                 m.REVOKED: _h_revoked, m.ACTOR_EXIT: _h_actor_exit}

    # -------------------------------------------------------------- results
    def _store(self, oid: bytes, value: tuple, freed: list) -> None:
        entry, waiters = self.objects.set_value(oid, value)
        if entry is None:
            self._discard_value(value)
            return
        if entry.value is not value:     # duplicate delivery
            self._discard_value(value)
            return
        for inner in value[2]:
            self.objects.pin(inner)
        if value[0] == m.SHM:
            self.resident[oid] = None
        if waiters:
            for cb in waiters:
                cb(oid, entry)
        self.objects.release_if_unheld(oid, freed)

    def _finish_with(self, rec: TaskRecord, results: list, freed: list) -> None:
        in_shm = False
        for oid, value in results:
            self._store(oid, value, freed)
            if value[0] == m.SHM:
                in_shm = True
        spec = rec.spec
        if in_shm and spec.kind == TASK and spec.max_retries != 0 \
                and spec.num_returns != STREAMING and rec.retries_left != 0:
            self._keep_lineage(rec)
        self._task_ended(rec, freed)

    def _finish(self, rec: TaskRecord, value: tuple) -> None:
        """End ``rec`` with the same value (an error) for every return."""
        freed: list = []
        for oid in rec.spec.return_ids():
            self._store(oid, value, freed)
        gen = rec.gen
        if gen is not None and not gen.done:
            # the consumer reads the failure as one last item, as if yielded
            oid = object_id_for(rec.spec.task_id, gen.count + 2)
            if rec.spec.task_id in self.generators:
                self.objects.pin(oid)
            self.objects.expect(oid)
            self._store(oid, value, freed)
            gen.count += 1
        self._task_ended(rec, freed)
        self._free(freed)

    def _task_ended(self, rec: TaskRecord, freed: list) -> None:
        rec.state = FINISHED
        spec = rec.spec
        self.tasks.pop(spec.task_id, None)
        objects = self.objects
        for _, dep in spec.deps:
            objects.unpin(dep, freed)
        for inner in spec.contained:
            objects.unpin(inner, freed)
        if spec.kind == ACTOR_CALL:
            objects.unpin(object_id_for(spec.actor_id, 1), freed)
        if rec.gen is not None:
            rec.gen.done = True
            self._wake_generator(rec)

    def _requeue(self, rec: TaskRecord) -> None:
        rec.state = QUEUED
        rec.worker = None
        q = self.queues.get(rec.key)
        if q is None:
            q = self.queues[rec.key] = deque()
        q.appendleft(rec)

    def _lost_value(self, oid: bytes) -> tuple:
        return self._error_value(ObjectLostError(
            f"object {oid.hex()} is lost: its value was freed when no reference to it "
            f"remained (a ref recreated from saved bytes does not keep an object alive), "
            f"and no task will produce it again."))

    def _error_value(self, err: BaseException) -> tuple:
        data, layout = pack_inline(serialize(err))
        return (m.ERROR, (data, layout), ())

    # ---------------------------------------------------------------- death
    def _on_worker_lost(self, w) -> None:
        self.loop.remove(w.conn.fileno())
        exit_desc = w.describe_exit()
        if w.oom is not None:     # the memory monitor killed it: say why, not just SIGKILL
            exit_desc = w.oom.describe()
        with self.lock:
            w.conn.close()
            self.workers.pop(w.worker_id, None)
            if w.proc.poll() is not None and w.proc in self.procs:
                self.procs.remove(w.proc)
                for relay in w.relays:
                    self.loop.remove(relay.fd)
                    relay.drain()
                    if relay in self.relays:
                        self.relays.remove(relay)
                for f in (w.proc.stdout, w.proc.stderr):
                    f.close()
            if w in self.idle:
                self.idle.remove(w)
            if w.state == STARTING:
                self.starting = max(0, self.starting - 1)
            freed: list = []
            self._apply_local_deltas(freed)
            for (client, rid) in [k for k in self.requests if k[0] is w]:
                req = self.requests.pop((client, rid))
                req.done = True
                for oid in req.ids:
                    self.objects.remove_waiter(oid, req.callback)
                req.callback = None
            if w.lease is not None:
                if not w.blocked:
                    w.lease.pool.release(w.lease)
                self.leased[w.lease_key].remove(w)
                w.lease = None
            w.state = "dead"
            if self.stopped:
                return
            for position, rec in enumerate(list(w.inflight.values())):
                if rec.spec.kind == ACTOR_CALL or rec.spec.kind == ACTOR_CREATE:
                    continue
                if rec.cancelled:
                    self._finish(rec, self._error_value(TaskCancelledError(
                        f"task {rec.spec.name} was cancelled")))
                elif rec.placement is not None and self._pg_gone(rec.placement):
                    self._finish(rec, self._pg_removed_value(rec))
                elif position > 0 or rec.spec.task_id in w.revoking:
                    # queued behind the running task: it never started, costs no retry
                    self._requeue(rec)
                elif rec.retries_left != 0:
                    if rec.retries_left > 0:
                        rec.retries_left -= 1
                    self._requeue(rec)
                elif w.oom is not None:
                    self._finish(rec, self._error_value(w.oom.error(rec.spec.max_retries)))
                else:
                    self._finish(rec, self._error_value(WorkerCrashedError(
                        f"The worker running {rec.spec.name} (pid={w.pid}) died: {exit_desc}. "
                        f"The task's retries (max_retries={rec.spec.max_retries}) are spent.")))
            if w.actor is not None:
                self._actor_worker_lost(w.actor, w, exit_desc)
            for oid, n in w.held.items():
                self.objects.remove_ref(oid, n, freed)
            w.held.clear()
            for offset in w.allocs:     # written but never reported: nobody can read it
                self.allocator.free(offset)
                self._memory_released()
            w.allocs.clear()
            self._free(freed)
            self._schedule()
            if len(self.idle) + self.starting == 0:
                self._want_workers(1)

    # ------------------------------------------------------------- shutdown
    def stop(self) -> None:
        """Stop every worker (EXIT, then SIGKILL after the grace period), the
        loop thread and the arena. Safe to call twice."""
        with self.lock:
            if self.stopped:
                return
            self.stopped = True
            for w in self.workers.values():
                w.conn.queue((m.EXIT,))
            # nobody will answer these now: say so instead of leaving callers waiting
            gone = ShoalError("shoal was shut down while this call was waiting")
            for req in list(self.requests.values()):
                if not req.done:
                    req.done = True
                    req.reply(False, gone)
            self.requests.clear()
            for gen in self.generators.values():
                for _, reply, _ in gen.waiters:
                    reply(False, gone)
                gen.waiters = []
        grace_end = time.monotonic() + config.get("kill_grace_s")
        for proc in list(self.procs):
            _wait_or_kill(proc, grace_end)
        self.loop.stop()      # joined: no worker can be started after this
        for proc in self.procs:
            _wait_or_kill(proc, time.monotonic())
        for w in list(self.workers.values()):
            w.conn.close()
        for relay in self.relays:   # what workers printed last still reaches the terminal
            relay.drain()
        for proc in self.procs:
            for f in (proc.stdout, proc.stderr):
                try:
                    f.close()
                except OSError:
                    pass
        self.arena.close()
        if self.spill is not None:
            self.spill.close()


def _wait_or_kill(proc, deadline: float) -> None:
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except Exception:
        proc.kill()
        try:
            proc.wait(timeout=5)
        except Exception:
            pass
