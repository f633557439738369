"""The node's worker processes: starting, leasing out, idling, retiring,
stealing queued work for idle ones, and what a worker's death means for
its tasks, actor, refs and memory.

Part of ``Node`` (a base class of it), under ``node.lock`` (``_grow_pool``
runs on the loop thread: see loop.py on PDEATHSIG).
"""
from __future__ import annotations

import os
import time

from .. import config, scratch
from ..exceptions import TaskCancelledError, WorkerCrashedError
from ..scheduler.task import ACTOR_CALL, ACTOR_CREATE
from ..transport import messages as m
from .logs import StreamRelay, open_log, write_output
from .workers import BUSY, IDLE, STARTING, TOOL_CLIENT, spawn_worker


class NodeWorkerPool:
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
            logs = self._logs_dir()
            for fd, to_err in ((w.proc.stdout.fileno(), False), (w.proc.stderr.fileno(), True)):
                os.set_blocking(fd, False)
                relay = StreamRelay(fd, w.pid, to_err, self._to_drivers,
                                    open_log(logs, w.pid, to_err) if logs else None)
                self.relays.append(relay)
                w.relays.append(relay)
                self.loop.add_reader(fd, self._on_output, (w, relay))
            self.loop.call_later(config.get("worker_start_timeout_s"), self._check_started, w)

    def _logs_dir(self) -> str | None:
        """Where workers' output is kept (node/logs.py); None if nowhere can be."""
        if self.logs_dir is None:
            try:
                self.logs_dir = scratch.make("logs")
            except OSError:
                self.logs_dir = ""          # output is still relayed, only not kept
        elif self.logs_dir and not self.own_logs_dir and not os.path.isdir(self.logs_dir):
            os.makedirs(self.logs_dir, mode=0o700, exist_ok=True)
        return self.logs_dir or None

    def _check_started(self, w) -> None:
        if w.state == STARTING and w.proc.poll() is None:
            w.proc.kill()   # never connected; its EOF cleans up

    def _on_output(self, arg) -> None:
        w, relay = arg
        if relay.read() is False:
            self.loop.remove(relay.fd)
            relay.close_log()
            w.out_pipes -= 1
            with self.lock:
                if relay in self.relays:
                    self.relays.remove(relay)

    def _to_drivers(self, to_stderr: bool, text: str, job: bytes | None = None,
                    to_peers: bool = True) -> None:
        """Output for the drivers of job ``job`` (None: for every driver):
        this process's own (a driver's embedded node), the drivers connected
        to this node, and the nodes that sent us tasks (they pass it on to
        theirs)."""
        if self.log_to_driver and (job is None or job == self.job_id):
            write_output(to_stderr, text)
        if not self.driver_clients and not self.peers:
            return
        with self.lock:
            for w in self.driver_clients:
                if job is None or w.job_id == job:
                    self._send(w, (m.OUTPUT, to_stderr, text))
            if to_peers:
                for link in self.peers.values():
                    if link.submitted:
                        self._send(link, (m.OUTPUT, to_stderr, text, job))

    def attach_driver(self, sock, pid: int, job_id: bytes, tool: bool = False) -> bytes:
        """A driver process connected to this node (cluster/agent.py): it
        talks like a worker (SUBMIT, CALL, REFS, PUT, EXPORT) but never runs
        tasks. When it goes, its refs go with it (``_on_worker_lost``). A
        ``tool`` (the dashboard, the CLI) is served alike but is no job: the
        state API lists it neither as a job nor as a worker, then or after."""
        from ..transport.framing import Connection
        from .workers import DRIVER_CLIENT, WorkerRecord
        sock.setblocking(False)
        w = WorkerRecord(os.urandom(8), None, Connection(sock), pid=pid)
        w.state = TOOL_CLIENT if tool else DRIVER_CLIENT
        w.entrypoint = _command_line(pid)
        w.job_id = job_id
        w.out_pipes = 0
        with self.lock:
            self.workers[w.worker_id] = w
            self.driver_clients.append(w)
        self.loop.call_soon(self.loop.add_reader, w.conn.fileno(), self._on_readable, w)
        return w.worker_id

    def _on_worker_lost(self, w) -> None:
        self.loop.remove(w.conn.fileno())
        exit_desc = w.describe_exit()
        if w.oom is not None:     # the memory monitor killed it: say why, not just SIGKILL
            exit_desc = w.oom.describe()
        with self.lock:
            w.conn.close()
            self.workers.pop(w.worker_id, None)
            if w in self.driver_clients:
                self.driver_clients.remove(w)
            if w.proc is not None and w.proc.poll() is not None and w.proc in self.procs:
                self.procs.remove(w.proc)
                for relay in w.relays:
                    self.loop.remove(relay.fd)
                    relay.drain()
                    relay.close_log()
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
            if self.claims:
                self._abandon_claims(w)
            if w.lease is not None:
                if not w.blocked:
                    w.lease.pool.release(w.lease)
                self.leased[w.lease_key].remove(w)
                w.lease = None
            was_tool, w.state = w.state == TOOL_CLIENT, "dead"
            if self.stopped:
                return
            if not was_tool:
                self.dead_workers.append((w, exit_desc, time.time()))
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


def _command_line(pid: int) -> str:
    """What a driver process on this machine runs (its job's entrypoint)."""
    import psutil
    try:
        return " ".join(psutil.Process(pid).cmdline()) or f"pid {pid}"
    except psutil.Error:
        return f"pid {pid}"
