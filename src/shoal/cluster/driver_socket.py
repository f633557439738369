"""The Unix socket through which drivers on this machine reach a node.

A node agent has one, and so does a local cluster started by
``shoal.init()`` (so that the dashboard, `shoal list` and
``init(address="auto")`` from another process reach it too). The socket
and a record describing it (``<node>.json``: socket path, pid, node id,
whether it is a cluster's head node, and, for a local cluster, the file of
its own token) live in the state directory's ``nodes/`` (mode 0700, the
socket 0600). A connecting driver (or tool: the dashboard, `shoal list`,
the state API used without ``init``, which are not jobs) proves the token,
then receives the
object store's memfd (SCM_RIGHTS) and from then on talks as a worker does
(``node.attach_driver``). The listener's thread belongs to this object:
``stop`` ends and joins it and removes the socket and the record.
"""
from __future__ import annotations

import json
import os
import pickle
import socket
import struct
import threading
import time

from .. import config
from ..transport.framing import HEADER
from .auth import AuthError, server_handshake
from .state import StateDir


class DriverListener:
    def __init__(self, node, token: str, is_head_node: bool, log, token_file: str | None = None):
        self.node = node
        self.token = token
        self.log = log
        state = StateDir().ensure()
        os.makedirs(state.sockets_dir, mode=0o700, exist_ok=True)
        node_hex = node.node_id.hex()
        self.path = state.node_socket(node_hex)
        self.record = self.path[:-5] + ".json"
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(self.path)
        os.chmod(self.path, 0o600)
        self.srv.listen(64)
        self.srv.settimeout(0.5)
        info = {"socket": self.path, "pid": os.getpid(), "node_id": node_hex,
                "is_head_node": is_head_node, "started": time.time()}
        if token_file is not None:
            info["token_file"] = token_file          # a local cluster's own token
        fd = os.open(self.record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True,
                                       name="shoal-driver-listener")
        self.thread.start()

    def _serve(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    conn, _ = self.srv.accept()
                except socket.timeout:
                    continue
                except OSError:
                    return
                if self.stopping.is_set():
                    conn.close()
                    return
                threading.Thread(target=self._accept, args=(conn,), daemon=True,
                                 name="shoal-driver-handshake").start()
        finally:
            self.srv.close()

    def _accept(self, conn: socket.socket) -> None:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
        try:
            role = server_handshake(conn, self.token, ("driver", "tool"),
                                    config.get("handshake_timeout_s"))
            node = self.node
            job_id = os.urandom(4)          # a driver's job: its tasks carry it
            setup = pickle.dumps({"arena_size": node.arena.size, "node_id": node.node_id,
                                  "namespace": node.namespace, "job_id": job_id}, protocol=5)
            socket.send_fds(conn, [HEADER.pack(len(setup)) + setup], [node.arena.fd])
            conn.settimeout(None)
        except (AuthError, OSError, ConnectionError) as e:
            self.log(f"refused a driver connection from pid {pid}: {e}")
            conn.close()
            return
        self.node.attach_driver(conn, pid, job_id, tool=role == "tool")
        self.log(f"{role} pid {pid} connected")

    def stop(self) -> None:
        self.stopping.set()
        _wake_accept(self.srv)
        self.thread.join(5)
        for p in (self.path, self.record):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


def _wake_accept(srv: socket.socket) -> None:
    """End a thread blocked in ``srv.accept()`` now, not at its next timeout
    (0.5 s: every shutdown waited for it). On Linux, shutting a TCP listening
    socket down makes a pending accept fail; a Unix one ignores that, so it
    is woken by a connection of our own, which the loop, seeing it is
    stopping, closes unread."""
    try:
        if srv.family == socket.AF_UNIX:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as poke:
                poke.settimeout(1.0)
                poke.connect(srv.getsockname())
        else:
            srv.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
