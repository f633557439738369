"""Node-to-node connections: the peer listener, links and object transfer.

Every node agent listens on one TCP port (the address it reaches the head
from: loopback for a loopback cluster) for other nodes. A connection proves
the cluster token (auth.py, role "node") before anything it sends is read,
then says what it is for in its first frame:

- ``("link", node_id, listen_address)``: a control link between two nodes (node/peers.py):
  both sides then exchange node messages over it, non-blocking, on the
  node's loop. The node with the lower id dials, so a pair has one link.
- ``("fetch",)``: object transfer. The fetcher sends ``(object_id,)``; the
  holder answers ``(True, size)`` and then the object's raw bytes, sent with
  ``sendfile`` straight from the shared-memory file (or the spill file), or
  ``(False, reason)``. The fetcher receives into its own shared memory with
  ``recv_into``: no copy in Python, TCP's window pipelines the chunks.
  Fetch connections are kept and reused, one per transfer at a time.
"""
from __future__ import annotations

import os
import pickle
import socket
import threading

from .. import config
from ..transport.framing import HEADER, encode
from .auth import AuthError, _recv_exactly, client_handshake, server_handshake
from .driver_socket import _wake_accept


def _read_frame(sock: socket.socket, limit: int = 1 << 20):
    (size,) = HEADER.unpack(_recv_exactly(sock, 4))
    if size > limit:
        raise ConnectionError(f"a {size}-byte frame where a small one was expected")
    return pickle.loads(_recv_exactly(sock, size))


def _parse(address) -> tuple[str, int]:
    host, port = address
    return str(host), int(port)


class PeerListener:
    """Accepts other nodes' links and fetches for ``node`` on ``host``."""

    def __init__(self, node, token: str, host: str, log):
        self.node = node
        self.token = token
        self.log = log
        self.sock = socket.create_server((host, 0), backlog=64)
        self.sock.settimeout(0.5)
        self.address = self.sock.getsockname()[:2]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True,
                                       name="shoal-peer-listener")
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        _wake_accept(self.sock)
        self.thread.join(timeout=2)
        self.sock.close()

    def _accept_loop(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, addr = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, addr), daemon=True,
                             name="shoal-peer").start()

    def _serve(self, conn: socket.socket, addr) -> None:
        peer = f"{addr[0]}:{addr[1]}"
        try:
            server_handshake(conn, self.token, "node", config.get("handshake_timeout_s"))
            first = _read_frame(conn)
        except (AuthError, OSError, ConnectionError, ValueError, pickle.UnpicklingError,
                EOFError) as e:
            self.log(f"refused a peer connection from {peer}: {e}")
            conn.close()
            return
        if not isinstance(first, tuple) or not first:
            self.log(f"refused a peer connection from {peer}: bad first frame")
            conn.close()
            return
        if first[0] == "link" and len(first) == 3 and isinstance(first[1], bytes):
            try:
                their_address = _parse(first[2])
            except (TypeError, ValueError):
                self.log(f"refused a peer connection from {peer}: bad address {first[2]!r}")
                conn.close()
                return
            conn.sendall(encode(("link", self.node.node_id, self.address)))
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.node.attach_peer(conn, first[1], their_address)
        elif first[0] == "fetch":
            conn.settimeout(None)
            try:
                self._serve_fetches(conn)
            except (OSError, ConnectionError, EOFError):
                pass
            finally:
                conn.close()
        else:
            self.log(f"refused a peer connection from {peer}: unknown purpose {first[0]!r}")
            conn.close()

    def _serve_fetches(self, conn: socket.socket) -> None:
        node = self.node
        # on loopback, sending from the mapping beats sendfile from the memfd
        # (and over a real link the other way round: docs/benchmarks.md)
        local = conn.getpeername()[0].startswith("127.")
        while True:
            (oid,) = _read_frame(conn)
            source = node.transfer_source(oid)
            if isinstance(source, str):
                conn.sendall(encode((False, source)))
                continue
            fd, offset, size, done, memory = source
            try:
                conn.sendall(encode((True, size)))
                if local and memory is not None:
                    conn.sendall(memory)
                    continue
                sent = 0
                while sent < size:
                    n = os.sendfile(conn.fileno(), fd, offset + sent, size - sent)
                    if n == 0:
                        raise ConnectionError("the object's file ended early")
                    sent += n
            finally:
                done()


def dial_link(address, token: str, my_id: bytes, my_address) -> tuple[socket.socket, bytes]:
    """Open a control link to the node at ``address``: (socket, its node id)."""
    sock = socket.create_connection(_parse(address), timeout=config.get("handshake_timeout_s"))
    try:
        client_handshake(sock, token, "node")
        sock.sendall(encode(("link", my_id, tuple(my_address))))
        kind, their_id, _ = _read_frame(sock)
        if kind != "link" or not isinstance(their_id, bytes):
            raise ConnectionError("the peer did not answer the link request")
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, their_id
    except BaseException:
        sock.close()
        raise


class Fetcher:
    """Pulls objects' bytes from other nodes, reusing connections."""

    def __init__(self, token: str):
        self.token = token
        self.idle: dict[tuple, list] = {}
        self.lock = threading.Lock()

    def _connection(self, address) -> socket.socket:
        key = _parse(address)
        with self.lock:
            pool = self.idle.get(key)
            if pool:
                return pool.pop()
        sock = socket.create_connection(key, timeout=config.get("handshake_timeout_s"))
        try:
            client_handshake(sock, self.token, "node")
            sock.sendall(encode(("fetch",)))
            sock.settimeout(None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        except BaseException:
            sock.close()
            raise
        return sock

    def fetch(self, address, oid: bytes, size: int, into: memoryview) -> str | None:
        """Read object ``oid`` (``size`` bytes) from the node at ``address``
        into ``into``. None on success, else why it failed."""
        try:
            sock = self._connection(address)
        except (OSError, ConnectionError) as e:
            return f"cannot reach the node holding it at {address[0]}:{address[1]} ({e})"
        try:
            sock.sendall(encode((oid,)))
            ok, detail = _read_frame(sock)
            if not ok:
                self._keep(address, sock)
                return detail
            if detail != size:
                raise ConnectionError(f"the holder has {detail} bytes, expected {size}")
            got = 0
            while got < size:
                n = sock.recv_into(into[got:], size - got)
                if n == 0:
                    raise ConnectionError("the connection closed mid-transfer")
                got += n
        except (OSError, ConnectionError, EOFError, ValueError) as e:
            sock.close()
            return f"the transfer from {address[0]}:{address[1]} failed ({e})"
        self._keep(address, sock)
        return None

    def _keep(self, address, sock) -> None:
        with self.lock:
            self.idle.setdefault(_parse(address), []).append(sock)

    def close(self) -> None:
        with self.lock:
            for pool in self.idle.values():
                for sock in pool:
                    sock.close()
            self.idle.clear()
