"""A blocking, authenticated connection to the head (used by node agents and
the CLI): ``HeadClient(address, token, role).call(op, *args)``."""
from __future__ import annotations

import itertools
import pickle
import socket

from .. import config
from ..transport.framing import HEADER, encode
from .auth import _recv_exactly, client_handshake



def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"a cluster address is HOST:PORT, got {address!r}")
    return host, int(port)


class HeadClient:
    def __init__(self, address: str, token: str, role: str, timeout: float = 10.0):
        self.address = address
        self.sock = socket.create_connection(parse_address(address), timeout=timeout)
        try:
            client_handshake(self.sock, token, role)
        except BaseException:
            self.sock.close()
            raise
        self._ids = itertools.count(1)
        self.max_message = config.get("max_message_bytes")

    def call(self, op: str, *args):
        request_id = next(self._ids)
        self.sock.sendall(encode((request_id, op, *args)))
        while True:
            (size,) = HEADER.unpack(_recv_exactly(self.sock, 4))
            if size > self.max_message:
                raise ConnectionError(f"the head sent a {size}-byte message, over the limit")
            rid, ok, value = pickle.loads(_recv_exactly(self.sock, size))
            if rid == request_id:
                if not ok:
                    raise value
                return value

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class HeadRequests:
    """Calls to the head that a node makes while it works (the named-actor
    directory): queued and made by a thread of their own, so the node never
    waits on the network under its lock. ``call(op, args, callback)``;
    ``callback(ok, value)`` runs on that thread."""

    def __init__(self, address: str, token: str):
        import queue
        import threading
        self.address = address
        self.token = token
        self.queue: queue.Queue = queue.Queue()
        self.client = None
        threading.Thread(target=self._run, daemon=True, name="shoal-head-requests").start()

    def call(self, op: str, args: tuple, callback) -> None:
        self.queue.put((op, args, callback))

    def close(self) -> None:
        self.queue.put(None)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                if self.client is not None:
                    self.client.close()
                return
            op, args, callback = item
            for attempt in (1, 2):          # once more on a fresh connection (head restarted)
                try:
                    if self.client is None:
                        self.client = HeadClient(self.address, self.token, "node")
                    value = self.client.call(op, *args)
                except (OSError, ConnectionError) as e:
                    if self.client is not None:
                        self.client.close()
                        self.client = None
                    if attempt == 2:
                        callback(False, ConnectionError(f"the head at {self.address} did not "
                                                        f"answer {op}: {e}"))
                    continue
                except Exception as e:       # the head refused it: say why
                    callback(False, e)
                    break
                callback(True, value)
                break
