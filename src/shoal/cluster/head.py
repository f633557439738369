"""The head: the cluster's tables, behind an authenticated socket.

    python -m shoal.cluster.head --host 127.0.0.1 --port 6380 [--token-file F]

One asyncio loop serves every peer (node agents, the CLI; drivers later).
A connection first passes the token handshake (cluster/auth.py); until it
has, nothing it sends is parsed beyond fixed-size raw bytes, and a peer that
sends garbage, a wrong token, a length prefix above ``max_message_bytes`` or
nothing at all (``handshake_timeout_s``) is logged with its address and
dropped. No peer can crash the head.

After the handshake, messages are frames (transport/framing.py): a request
``(request_id, op, *args)`` gets a reply ``(request_id, ok, value)``.

Tables: nodes (id, address, resources, state, last heartbeat) and jobs.
They are persisted (cluster/tables.py: SQLite in the state directory, or a
Redis server with ``--storage``), so a restarted head knows its nodes and
jobs; running agents reconnect and carry on. A node not heard from for
``node_timeout_s`` is declared DEAD (a closed connection shortens the wait to
about a second); if it comes back it is *fenced*: told to rejoin under a new
node id, so nothing it held under the old one is trusted again.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import signal
import sys
import time

from .. import config
from . import jobs
from .auth import REPLY_SIZE, AuthError, find_token, server_check, server_hello
from ..transport.framing import HEADER, encode
from .state import StateDir
from .tables import open_tables

ALIVE, DEAD = "ALIVE", "DEAD"
CLOSED_GRACE_S = 1.0      # a node whose connection closed is dead this soon unless it returns


def log(msg: str) -> None:
    print(f"[shoal head {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class NodeEntry:
    def __init__(self, node_id: str, info: dict):
        self.node_id = node_id
        self.info = info                  # host, pid, resources (totals)
        self.available = dict(info.get("resources", {}))
        self.pending = 0
        self.state = ALIVE
        self.last_seen = time.monotonic()
        self.death_reason = None
        self.stats: dict = {}             # the node's last heartbeat: store, tasks, metrics

    def row(self, stats: bool = True) -> dict:
        return {"node_id": self.node_id, "state": self.state, "host": self.info.get("host"),
                "pid": self.info.get("pid"), "resources": self.info.get("resources", {}),
                "available": self.available, "pending_tasks": self.pending,
                "is_head_node": self.info.get("is_head_node", False),
                "peer_address": self.info.get("peer_address"),
                "driver": bool(self.info.get("driver")),
                "death_reason": self.death_reason,
                "stats": self.stats if stats and self.state == ALIVE else {}}


class Head:
    def __init__(self, host: str, port: int, token: str, state: StateDir,
                 storage: str | None = None):
        self.host = host
        self.port = port
        self.token = token
        self.state = state
        self.nodes: dict[str, NodeEntry] = {}
        self.max_message = config.get("max_message_bytes")
        self.handshake_timeout = config.get("handshake_timeout_s")
        self.node_timeout = config.get("node_timeout_s")
        self.started = time.time()
        self.stopping = asyncio.Event()
        self.tables = open_tables(storage, state.db_path)
        self.jobs: dict[str, jobs.Job] = {}
        self.actors: dict[str, dict] = {}   # "namespace\0name" -> named actor's row
        self._load()

    # ------------------------------------------------------------- tables
    def _load(self) -> None:
        """Nodes from before a restart: alive ones get node_timeout_s to reconnect."""
        for node_id, info, state, reason in self.tables.nodes():
            entry = NodeEntry(node_id, info)
            entry.state, entry.death_reason = state, reason
            self.nodes[node_id] = entry
        if self.nodes:
            log(f"recovered {len(self.nodes)} node(s) from {self.tables.where}")
        self.actors.update(self.tables.actors())
        for job_id, row in self.tables.jobs():
            job = jobs.Job(job_id, row["entrypoint"], os.path.join(self.state.path, "jobs",
                                                                    job_id))
            job.state, job.exit_code, job.message = row["state"], row["exit_code"], row["message"]
            job.submitted, job.ended = row["submitted"], row["ended"]
            if job.state == jobs.RUNNING:      # its process died with the old head
                job.state, job.message = jobs.FAILED, "the head restarted while it ran"
            self.jobs[job_id] = job

    def _save(self, entry: NodeEntry) -> None:
        self.tables.save_node(entry.node_id, entry.info, entry.state, entry.death_reason)

    def _declare_dead(self, entry: NodeEntry, reason: str) -> None:
        entry.state = DEAD
        entry.death_reason = reason
        self._save(entry)
        log(f"node {entry.node_id[:12]} ({entry.info.get('host')}) declared dead: {reason}")

    # ------------------------------------------------------------ requests
    def _op_register_node(self, conn, node_id: str, info: dict):
        _require_role(conn, "node")
        _check_node_id(node_id)
        if not isinstance(info, dict) or not isinstance(info.get("resources"), dict):
            raise ValueError("register_node needs an info dict with a resources dict")
        try:
            info = json.loads(json.dumps(info))      # only plain data is kept (and storable)
        except (TypeError, ValueError):
            raise ValueError("register_node: info must be plain JSON-able data") from None
        old = self.nodes.get(node_id)
        if old is not None and old.state == DEAD:
            return "fenced"
        entry = NodeEntry(node_id, info)
        self._save(entry)
        self.nodes[node_id] = entry
        conn["node_id"] = node_id
        log(f"node {node_id[:12]} joined from {info.get('host')} with {info.get('resources')}")
        return "ok"

    def _op_heartbeat(self, conn, node_id: str, available: dict, pending: int,
                      stats: dict | None = None):
        _require_role(conn, "node")
        _check_node_id(node_id)
        if not isinstance(available, dict) or not isinstance(pending, int) or \
                not isinstance(stats, (dict, type(None))):
            raise ValueError("heartbeat needs (node_id, {resource: free}, pending count, "
                             "stats)")
        entry = self.nodes.get(node_id)
        if entry is None:
            return "unknown"          # a head restarted without its database: register again
        if entry.state == DEAD:
            return "fenced"
        entry.last_seen = time.monotonic()
        entry.available = available
        entry.pending = pending
        entry.stats = stats or {}
        conn["node_id"] = node_id
        return "ok"

    # ------------------------------------------------------- named actors
    def _op_actor_register(self, conn, namespace: str, name: str, row: dict):
        """Claim ``name`` in ``namespace`` for the actor in ``row`` (its
        actor_id, node_id, handle meta); the live holder's row if taken."""
        _require_role(conn, "node")
        if not all(isinstance(x, str) for x in (namespace, name)) or not isinstance(row, dict):
            raise ValueError("actor_register needs (namespace, name, row)")
        key = f"{namespace}\0{name}"
        old = self.actors.get(key)
        if old is not None and old["actor_id"] != row.get("actor_id") and self._holder_alive(old):
            return old
        row = json.loads(json.dumps(row))
        self.actors[key] = row
        self.tables.save_actor(key, row)
        return None

    def _op_actor_lookup(self, conn, namespace: str, name: str):
        _require_role(conn, "node")
        row = self.actors.get(f"{namespace}\0{name}")
        return row if row is not None and self._holder_alive(row) else None

    def _op_actor_unregister(self, conn, namespace: str, name: str, actor_id: str):
        _require_role(conn, "node")
        key = f"{namespace}\0{name}"
        row = self.actors.get(key)
        if row is not None and row.get("actor_id") == actor_id:
            del self.actors[key]
            self.tables.save_actor(key, None)

    def _holder_alive(self, row: dict) -> bool:
        entry = self.nodes.get(row.get("node_id"))
        return entry is not None and entry.state == ALIVE

    def _op_view(self, conn):
        """The alive nodes, for node agents: where to reach them, what they have."""
        _require_role(conn, "node")
        return [e.row(stats=False) for e in self.nodes.values() if e.state == ALIVE]

    def _op_status(self, conn):
        return {"head": {"host": self.host, "port": self.port, "pid": os.getpid(),
                         "uptime_s": time.time() - self.started},
                "nodes": [e.row() for e in self.nodes.values()]}

    # ---------------------------------------------------------------- jobs
    def _save_job(self, job) -> None:
        self.tables.save_job(job.job_id, job.row())

    def _job(self, job_id):
        job = self.jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise ValueError(f"no job {job_id!r}: `shoal job list` shows the jobs")
        return job

    def _op_job_submit(self, conn, entrypoint: str, archive: bytes | None, env: dict):
        _require_role(conn, "cli")
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            raise ValueError("a job needs an entrypoint command, e.g. `python script.py`")
        if env is not None and (not isinstance(env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
            raise ValueError("a job's env must map names to strings")
        job_id = "job_" + os.urandom(6).hex()
        root = os.path.join(self.state.path, "jobs", job_id)
        workdir = os.path.join(root, "working_dir")
        os.makedirs(workdir, mode=0o700)
        if archive is not None:
            if not isinstance(archive, bytes):
                raise ValueError("the working directory must come as a tar.gz archive")
            jobs.unpack_working_dir(archive, workdir)
        job = jobs.Job(job_id, entrypoint, root)
        jobs.start(job, workdir, env or {}, self.state.path)
        self.jobs[job_id] = job
        self._save_job(job)
        log(f"job {job_id} started: {entrypoint}")
        return job_id

    def _op_job_status(self, conn, job_id):
        return self._job(job_id).row()

    def _op_job_logs(self, conn, job_id, offset: int):
        job = self._job(job_id)
        data, offset = jobs.read_log(job, int(offset))
        return data, offset, job.state != jobs.RUNNING

    def _op_job_stop(self, conn, job_id):
        _require_role(conn, "cli")
        jobs.stop(self._job(job_id))
        return "ok"

    def _op_job_list(self, conn):
        return [j.row() for j in self.jobs.values()]

    def _op_shutdown(self, conn):
        if conn["role"] != "cli":
            log(f"refused shutdown from a {conn['role']} connection at {_addr(conn['peer'])}")
            raise PermissionError("only the shoal CLI may shut the head down")
        self.stopping.set()
        return "ok"

    # -------------------------------------------------------- connections
    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        peer = writer.get_extra_info("peername")
        conn = {"role": None, "node_id": None, "peer": peer}
        try:
            hello, nonce = server_hello()
            writer.write(hello)
            await writer.drain()
            reply = await asyncio.wait_for(reader.readexactly(REPLY_SIZE),
                                           self.handshake_timeout)
            conn["role"], answer = server_check(self.token, nonce, reply)
            writer.write(answer)
            await writer.drain()
        except AuthError as e:
            log(f"refused a connection from {_addr(peer)}: {e}")
            return await _close(writer)
        except asyncio.TimeoutError:
            log(f"refused a connection from {_addr(peer)}: no handshake within "
                f"{self.handshake_timeout:g} s")
            return await _close(writer)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            log(f"refused a connection from {_addr(peer)}: it closed during the handshake "
                f"({type(e).__name__})")
            return await _close(writer)
        try:
            await self._serve(conn, reader, writer)
        finally:
            node_id = conn.get("node_id")
            entry = self.nodes.get(node_id) if node_id else None
            if entry is not None and entry.state == ALIVE:
                # its agent is gone or cut off: dead soon unless it reconnects
                entry.last_seen = min(entry.last_seen,
                                      time.monotonic() - self.node_timeout + CLOSED_GRACE_S)
            await _close(writer)

    async def _serve(self, conn, reader, writer) -> None:
        peer = _addr(conn["peer"])
        while not self.stopping.is_set():
            try:
                header = await reader.readexactly(4)
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                return
            (size,) = HEADER.unpack(header)
            if size > self.max_message:
                log(f"dropped {conn['role']} connection from {peer}: a message of {size} bytes "
                    f"is over the {self.max_message}-byte limit")
                return
            try:
                payload = await reader.readexactly(size)
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                log(f"dropped {conn['role']} connection from {peer}: truncated message")
                return
            try:
                request_id, op, *args = pickle.loads(payload)
                handler = getattr(self, "_op_" + op)
            except Exception as e:
                log(f"dropped {conn['role']} connection from {peer}: malformed message "
                    f"({type(e).__name__})")
                return
            try:
                value, ok = handler(conn, *args), True
            except Exception as e:      # a bad request is answered, never fatal
                value, ok = e, False
            try:
                writer.write(encode((request_id, ok, value)))
                await writer.drain()
            except (ConnectionError, OSError) as e:
                log(f"dropped {conn['role']} connection from {peer}: {type(e).__name__} "
                    f"while answering")
                return

    # ---------------------------------------------------------------- loop
    async def _watch_nodes(self) -> None:
        while not self.stopping.is_set():
            for job in list(self.jobs.values()):
                if jobs.poll(job):
                    self._save_job(job)
                    log(f"job {job.job_id} {job.state.lower()} (exit code {job.exit_code})")
            now = time.monotonic()
            for entry in list(self.nodes.values()):
                if entry.state == ALIVE and now - entry.last_seen > self.node_timeout:
                    try:
                        self._declare_dead(entry, f"no heartbeat for "
                                                  f"{now - entry.last_seen:.1f} s "
                                                  f"(node_timeout_s={self.node_timeout:g})")
                    except Exception as e:      # one bad entry must not stop the watch
                        log(f"could not record node {entry.node_id!r} as dead: {e!r}")
                        entry.state = DEAD
            try:
                await asyncio.wait_for(self.stopping.wait(), 0.2)
            except asyncio.TimeoutError:
                pass

    async def run(self) -> None:
        server = await asyncio.start_server(self._on_connect, self.host, self.port)
        self.port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        self.state.write_head(self.host, self.port, os.getpid())
        log(f"listening on {self.host}:{self.port}")
        watcher = asyncio.create_task(self._watch_nodes())
        async with server:
            await self.stopping.wait()
        watcher.cancel()
        for job in self.jobs.values():           # the jobs it started go with it
            if job.state == jobs.RUNNING and job.proc is not None:
                jobs._signal_group(job.proc.pid, signal.SIGKILL)
                job.proc.wait()
                jobs.poll(job)
                job.state, job.message = jobs.STOPPED, "the head was stopped"
                self._save_job(job)
        self.tables.close()
        log("stopped")


def _require_role(conn, role: str) -> None:
    if conn["role"] != role:
        log(f"refused a {conn['role']} connection at {_addr(conn['peer'])} acting as {role}")
        raise PermissionError(f"only a {role} may do that")


def _check_node_id(node_id) -> None:
    if not isinstance(node_id, str) or not 8 <= len(node_id) <= 64 or not node_id.isalnum():
        raise ValueError(f"a node id is 8-64 letters and digits, got {node_id!r}")


async def _close(writer) -> None:
    try:
        writer.close()
        await writer.wait_closed()
    except Exception:
        pass


def _addr(peer) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m shoal.cluster.head")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=config.get("head_port"))
    p.add_argument("--token-file", default=None)
    p.add_argument("--storage", default=None,
                   help="a Redis URL for the tables (default: SQLite in the state dir)")
    args = p.parse_args(argv)
    state = StateDir().ensure()
    token = find_token(args.token_file)
    asyncio.run(Head(args.host, args.port, token, state, args.storage).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
