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
import shutil
import signal
import tempfile
import threading
import time
from collections import OrderedDict, deque

from .. import config
from ..exceptions import ObjectLostError, ShoalError
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
from .actors import ActorRecord, NameClaim, NodeActors
from .lineage import NodeLineage
from .loop import EventLoop
from .memory import NodeMemory
from .memory_monitor import MemoryMonitor
from .metrics import MetricTable
from .fetch import NodeFetch
from .introspect import NodeIntrospection
from .packages import NodePackages
from .peers import NodePeers
from .placement import NodePlacement
from .spread_pg import NodeSpreadPlacement
from .pool import NodeWorkerPool
from .remote_actors import NodeRemoteActors
from .records import FINISHED, WAITING_DEPS, GeneratorState, TaskRecord, ended_row, uncount
from .scheduling import NodeScheduling
from .services import NodeServices


class Node(NodeScheduling, NodeWorkerPool, NodeServices, NodeActors, NodePlacement, NodeMemory,
           NodeLineage, NodePeers, NodeFetch, NodeRemoteActors, NodeSpreadPlacement,
           NodePackages, NodeIntrospection):
    """One machine's runtime. Its methods are split by concern: this file
    (state, refs and freeing, messages from workers, results, shutdown),
    scheduling.py (submitting and scheduling tasks), pool.py (worker
    processes and their deaths), services.py (requests clients wait on),
    actors.py (actor lifecycle), placement.py (placement groups and
    strategies), memory.py (shared memory, spilling, shipping values),
    lineage.py (rebuilding lost objects), peers.py (other nodes: links,
    forwarded tasks, lent objects, a peer's death), fetch.py (moving lent
    objects' bytes), remote_actors.py (actors on other nodes, named actors),
    spread_pg.py (placement groups across nodes), packages.py (working
    directories) and introspect.py (the rows of the state API)."""

    def __init__(self, resources: dict[str, float], object_store_memory: int,
                 log_to_driver: bool, namespace: str, job_id: bytes, node_id: bytes,
                 runs_tasks: bool = True, logs_dir: str | None = None):
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
        self.memory_expiry_armed = False
        self.memory_deadlines: dict = {}              # task_id -> when its wait for room ends
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
        self.claims: dict[bytes, NameClaim] = {}   # named actor id -> its claim, until submitted
        self.history: deque = deque(maxlen=config.get("task_history_size"))  # ended_row()s
        self.ended_count = 0                      # tasks ended here, and how many failed
        self.failed_count = 0
        self.metrics = MetricTable()              # user metrics its processes reported
        self.dead_workers: deque = deque(maxlen=1000)   # (WorkerRecord, exit, when), newest last
        self.driver_pid = None                    # set when a driver runs in this process
        self.started = time.time()
        # workers' log files (node/logs.py): the agent's directory, or a scratch
        # one of this process's, made with the first worker and removed at stop
        self.logs_dir = logs_dir
        self.own_logs_dir = logs_dir is None
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
        self.driver_clients: list = []            # drivers connected over a socket (cluster)
        self.view = None                          # other nodes ({node_id: PeerInfo}) in a cluster
        self.peers: dict = {}                     # node_id -> PeerLink
        self.unreachable: set = set()             # node ids whose link died (peers.py)
        self.fetching: dict = {}                  # object_id -> REMOTE value being fetched
        self.spread_turn = 0
        self.lost_bundles = False                 # a placement group lost bundles with a peer
        self.inline_threshold = config.get("inline_threshold")
        self.pipeline_depth = config.get("pipeline_depth")
        self.fail_infeasible = config.get("fail_infeasible")
        self.idle_timeout = config.get("idle_worker_timeout_s")
        # a driver's node in a cluster runs nothing itself (core/client.py)
        self.runs_tasks = runs_tasks
        self.target_pool = max(1, int(resources.get("CPU", 1))) if runs_tasks else 0
        self.stopped = False
        self.procs: list = []                     # every worker process started, for reaping
        self.relays: list = []                    # output relays of live workers
        self.packages: dict = {}                  # working-dir packages (packages.py)
        self.packages_dir = os.path.join(tempfile.gettempdir(),
                                         f"shoal-packages-{os.getpid()}-{node_id.hex()[:8]}")
        self.worker_env = {"SHOAL_JOB_ID": job_id.hex(), "SHOAL_NODE_ID": node_id.hex(),
                           "SHOAL_NAMESPACE": namespace, "SHOAL_PACKAGES_DIR": self.packages_dir}
        self.loop = EventLoop()
        self.loop.start()
        self.starting = self.target_pool
        if runs_tasks:
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
            if e.origins:
                self._release_origins(oid, e)
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

    # ------------------------------------------------------------- sending
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

    # ------------------------------------------------------------- messages
    def _on_readable(self, w) -> None:
        self._handle_input(w, self._handlers, self._on_worker_lost)

    def _handle_input(self, w, handlers: dict, on_closed) -> None:
        """Read what a worker, driver or peer link sent and handle it."""
        try:
            msgs = w.conn.read_messages()
        except ConnectionClosed:
            on_closed(w)
            return
        if not msgs:
            return
        with self.lock:
            freed: list = []
            self._apply_local_deltas(freed)
            for msg in msgs:
                if w.state == "dead":
                    break
                handlers[msg[0]](self, w, msg, freed)
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
            uncount(held, oid, n)
            objects.remove_ref(oid, n, freed)

    def _h_put(self, w, msg, freed) -> None:
        self._claim(w, msg[2])
        self._store(msg[1], msg[2], freed)
        self._set_owner(msg[1], w)

    def _set_owner(self, oid: bytes, owner) -> None:
        """Who put ``oid`` (memory reports; task results get theirs at submit)."""
        e = self.objects.get(oid)
        if e is not None:
            e.owner = owner

    def _h_done(self, w, msg, freed) -> None:     # hot: every task's end
        _, task_id, results, retryable, failure, run_start, run_end = msg
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
        rec.run_start = run_start
        rec.run_end = run_end
        rec.failure = failure
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

    def _h_metrics(self, w, msg, freed) -> None:
        self.metrics.record(msg[1])

    def _h_actor_exit(self, w, msg, freed) -> None:
        actor = w.actor
        if actor is not None:
            actor.no_restart = True
            actor.exit_reason = "The actor exited by calling exit_actor()."

    _handlers = {m.HELLO: _h_hello, m.SUBMIT: _h_submit, m.EXPORT: _h_export, m.REFS: _h_refs,
                 m.PUT: _h_put, m.DONE: _h_done, m.GEN_ITEM: _h_gen_item, m.CALL: _h_call,
                 m.REVOKED: _h_revoked, m.ACTOR_EXIT: _h_actor_exit, m.METRICS: _h_metrics}

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
        if rec.failure is None:
            rec.failure = value            # decoded only if the state API asks
        if not rec.run_end:
            rec.run_end = time.time()      # when the node ended it
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
        if spec.kind != ACTOR_CREATE or rec.failure is not None:
            # (a created actor's creation is kept when its run ends: _actor_created)
            self.history.append(ended_row(rec))
            self.ended_count += 1
            if rec.failure is not None:
                self.failed_count += 1
        if self.memory_deadlines:
            self.memory_deadlines.pop(spec.task_id, None)
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

    def _lost_value(self, oid: bytes) -> tuple:
        return self._error_value(ObjectLostError(
            f"object {oid.hex()} is lost: its value was freed when no reference to it "
            f"remained (a ref recreated from saved bytes does not keep an object alive), "
            f"and no task will produce it again."))

    def _error_value(self, err: BaseException) -> tuple:
        data, layout = pack_inline(serialize(err))
        return (m.ERROR, (data, layout), ())

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
            links = list(self.peers.values())
            self.peers.clear()
        for link in links:
            link.conn.close()
        if self.view is not None:
            self.fetcher.close()
            if self.head is not None:
                self.head.close()
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
            relay.close_log()
        if self.own_logs_dir and self.logs_dir:
            shutil.rmtree(self.logs_dir, ignore_errors=True)
        for proc in self.procs:
            for f in (proc.stdout, proc.stderr):
                try:
                    f.close()
                except OSError:
                    pass
        self.arena.close()
        if self.spill is not None:
            self.spill.close()
        self._remove_packages()


def _wait_or_kill(proc, deadline: float) -> None:
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except Exception:
        proc.kill()
        try:
            proc.wait(timeout=5)
        except Exception:
            pass
