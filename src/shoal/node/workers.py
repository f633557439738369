"""Worker processes: starting them and the node's record of each.

A worker is started with an inherited socketpair end (its only channel to
the node) and the arena's memfd; its stdout and stderr are pipes that the
node relays to the driver. Nothing listens on any address.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

from .. import config
from ..transport.framing import Connection

IDLE, BUSY, ACTOR, STARTING, DEAD = "idle", "busy", "actor", "starting", "dead"
DRIVER_CLIENT = "driver"     # a driver process connected to this node (cluster/agent.py)
TOOL_CLIENT = "tool"         # the dashboard or a CLI connected alike: not a job


class WorkerRecord:
    is_peer = False           # (a PeerLink, which the node treats alike in places, says True)
    __slots__ = ("worker_id", "proc", "pid", "conn", "state", "inflight", "lease", "lease_key",
                 "functions", "held", "actor", "blocked", "label", "out_pipes", "exit_desc",
                 "revoking", "retire_pending", "allocs", "relays", "oom", "started",
                 "entrypoint", "row_id", "job_id")

    def __init__(self, worker_id: bytes, proc: subprocess.Popen | None, conn: Connection,
                 pid: int | None = None):
        self.worker_id = worker_id
        self.row_id = worker_id    # how a task's history row names where it ran (records.py)
        self.proc = proc             # None for a connected driver (not our child)
        self.pid = proc.pid if proc is not None else pid
        self.conn = conn
        self.state = STARTING
        self.inflight: OrderedDict = OrderedDict()   # task_id -> TaskRecord, in send order
        self.lease = None          # the Assignment its current tasks run under
        self.lease_key = None      # the resource shape of that lease
        self.functions: set = set()  # function ids this worker has been sent
        self.held: dict = {}       # object_id -> count of refs this process holds
        self.actor = None          # the ActorRecord it hosts, if any
        self.blocked = 0           # requests it waits on in get/wait
        self.label = None
        self.out_pipes = 2
        self.exit_desc = None
        self.revoking: set = set()
        self.retire_pending = False
        self.relays: list = []     # its stdout and stderr relays
        self.allocs: set = set()   # arena offsets it allocated and has not yet reported
        self.oom = None            # an OomKill if the memory monitor killed it
        self.started = time.time()
        self.entrypoint = None     # a connected driver's command line (its job)
        self.job_id = None         # a connected driver's job id

    def describe_exit(self) -> str:
        if self.proc is None:
            return "the driver disconnected"
        code = self.proc.poll()
        if code is None:
            try:
                code = self.proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                return "its connection closed while the process was still running"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"the process was killed by {name}"
        return f"the process exited with code {code}"


def spawn_worker(worker_id: bytes, arena_fd: int, arena_size: int, node_env: dict) -> WorkerRecord:
    node_sock, worker_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = dict(os.environ)
    env.update(node_env)
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable]
    if config.get("worker_skip_site"):
        # the driver's sys.path already holds what site would add
        package_root = str(Path(__file__).resolve().parents[2])
        paths = [package_root] + [p for p in sys.path if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        cmd.append("-S")
    cmd += ["-m", "shoal.worker.main", str(worker_sock.fileno()), str(arena_fd),
            str(arena_size), worker_id.hex(), str(os.getpid())]
    proc = subprocess.Popen(
        cmd, pass_fds=(worker_sock.fileno(), arena_fd), env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True, cwd=os.getcwd())
    worker_sock.close()
    node_sock.setblocking(False)
    return WorkerRecord(worker_id, proc, Connection(node_sock))
