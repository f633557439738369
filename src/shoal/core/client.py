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
import sys
import threading

import psutil

from ..exceptions import ShoalError
from ..object_store.arena import Arena
from ..transport import messages as m
from ..transport.framing import HEADER, Connection
from .worker import WorkerCore


class ClientCore(WorkerCore):
    is_driver = True

    def __init__(self, conn, arena, node_id: bytes, namespace: str):
        super().__init__(conn, arena, os.urandom(4), node_id, namespace, b"driver")
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
            stream = sys.stderr if msg[1] else sys.stdout
            try:
                stream.write(msg[2])
                stream.flush()
            except (ValueError, OSError):
                pass
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


def connect(address: str, namespace: str | None = None) -> ClientCore:
    """Connect to the node agent on this machine for cluster ``address``
    ("auto", or the head's HOST:PORT as `shoal start --head` printed it)."""
    from ..cluster.auth import client_handshake, find_token
    from ..cluster.state import StateDir
    state = StateDir()
    head = state.read_head()
    if address != "auto":
        if head is None or address.rpartition(":")[2] != str(head["port"]):
            raise ConnectionError(
                f"no cluster at {address} has a node on this machine: start one with "
                f"`shoal start --head` or `shoal start --address {address}` (connecting a "
                f"driver from a machine without a node is not supported yet)")
    nodes = [n for n in state.local_nodes() if psutil.pid_exists(n["pid"])]
    if not nodes:
        raise ConnectionError(
            "no running shoal node on this machine: start a cluster with `shoal start --head` "
            f"(state directory {state.path}), or call shoal.init() without an address")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(nodes[0]["socket"])
        client_handshake(sock, find_token(None), "driver")
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
    return ClientCore(Connection(sock), arena, setup["node_id"], namespace or setup["namespace"])

