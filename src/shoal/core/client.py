"""A driver connected to a running node (``shoal.init(address="auto")``).

The node runs in its agent process (cluster/agent.py); this driver reaches
it over a Unix socket in the state directory, proves the cluster token,
receives the object store's memfd (SCM_RIGHTS) and from then on speaks
exactly as a worker does (SUBMIT, CALL, REFS, PUT, EXPORT), with a reader
thread routing replies to the calling threads. Objects are read zero-copy
from the same shared memory. Dropping the connection (exit, crash,
``shutdown``) releases every ref this driver held, so its objects and
non-detached actors go with it.
"""
from __future__ import annotations

import os
import pickle
import socket
import threading

import psutil

from ..exceptions import ShoalError
from ..object_store.arena import Arena
from ..transport import messages as m
from ..transport.framing import HEADER, Connection
from ..node.logs import write_output
from .worker import WorkerCore


class ClientCore(WorkerCore):
    is_driver = True

    def __init__(self, conn, arena, node_id: bytes, namespace: str, job_id: bytes):
        super().__init__(conn, arena, job_id, node_id, namespace, b"driver")
        self.closed = False
        self.on_message = self._on_message
        self.start_reader()
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_refs_forever, daemon=True,
                                         name="shoal-driver-refs")
        self._flusher.start()

    def _flush_refs_forever(self) -> None:
        """Refs dropped while this driver makes no calls still reach the node."""
        while not self._stop.wait(0.1):
            try:
                self.flush_refs()
            except Exception:
                return

    def _on_message(self, msg: tuple) -> None:
        if msg[0] == m.OUTPUT:          # what workers printed, as a local driver shows it
            write_output(msg[1], msg[2])
            return
        if msg[0] == m.NODE_ID:
            self.node_id = msg[1]
            return
        if msg[0] == m.EXIT and not self.closed:
            self.closed = True
            gone = ShoalError("the shoal node this driver is connected to stopped")
            for fut in list(self.waiting.values()):
                if not fut.done():
                    fut.set_result((False, gone))

    def shutdown(self) -> None:
        self._stop.set()
        try:
            self.flush_refs()
        except Exception:
            pass
        self.closed = True
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.conn.close()
        self.arena.close()


def join_as_driver(address: str, namespace: str | None):
    """A driver on a machine without a node of the cluster: this process
    gets a node of its own with no workers (``runs_tasks=False``) that joins
    the cluster (an Agent thread registers and heartbeats it) and sends
    every task and actor to the other nodes. Objects come to it as to any
    node (fetched into its own shared memory), so ``get`` stays zero-copy.
    The token comes from SHOAL_TOKEN or the state directory's token file."""
    from .. import config
    from ..cluster.agent import Agent
    from ..cluster.auth import find_token
    from ..node.machine import machine_resources
    from ..node.node import Node
    from .driver import DriverCore
    token = find_token(None)
    _, store = machine_resources(0, 0, None, None)
    ns = namespace or "anonymous-" + os.urandom(4).hex()
    node = Node({"CPU": 0}, store, True, ns, os.urandom(4), os.urandom(16), runs_tasks=False)
    agent = Agent(address, token, node, driver=True)
    try:
        client = agent.join()
    except BaseException:
        if agent.peer_listener is not None:
            agent.peer_listener.stop()
        node.stop()
        raise
    thread = threading.Thread(target=agent.run, args=(client,), daemon=True,
                              name="shoal-driver-agent")
    thread.start()
    node.wait_for_links(config.get("handshake_timeout_s"))
    core = DriverCore(node, ns)
    core.agent, core.agent_thread = agent, thread
    return core


def connect(address: str, namespace: str | None = None, role: str = "driver") -> ClientCore:
    """Connect to the node agent on this machine for cluster ``address``
    ("auto", or the head's HOST:PORT as `shoal start --head` printed it),
    as a driver (a job) or as a "tool" (the dashboard, the CLI)."""
    from ..cluster.auth import client_handshake, find_token, read_token
    from ..cluster.state import StateDir
    state = StateDir()
    if address.startswith("unix://"):          # a node's driver socket, by path
        path, token = address[len("unix://"):], find_token(None)
    else:
        head = state.read_head()
        nodes = [n for n in state.local_nodes() if psutil.pid_exists(n["pid"])]
        agents = [n for n in nodes if "token_file" not in n]
        if address != "auto" and (not agents or head is None
                                  or address.rpartition(":")[2] != str(head["port"])):
            return join_as_driver(address, namespace)
        if not nodes:
            raise ConnectionError(
                "no running shoal node on this machine: start a cluster with `shoal start "
                f"--head` (state directory {state.path}), or call shoal.init() without an "
                f"address")
        # a cluster's agent first; else the newest local cluster (shoal.init() elsewhere)
        chosen = agents[0] if agents else max(nodes, key=lambda n: n.get("started", 0))
        path = chosen["socket"]
        token = read_token(chosen["token_file"]) if "token_file" in chosen else find_token(None)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(path)
        client_handshake(sock, token, role)
        data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 1)
        if not fds or len(data) < 4:
            raise ConnectionError("the node sent no object store")
        (size,) = HEADER.unpack(data[:4])
        data = data[4:]
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("the node closed the connection during setup")
            data += chunk
        setup = pickle.loads(data)
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    arena = Arena(fds[0], setup["arena_size"], owner=False)
    return ClientCore(Connection(sock), arena, setup["node_id"], namespace or setup["namespace"],
                      setup["job_id"])

