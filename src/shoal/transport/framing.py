"""Frames over a stream socket: 4-byte little-endian length, then a pickled
message tuple (see ``messages``).

Two styles of use, one class:
- the node's event loop uses a non-blocking socket, ``queue()`` to buffer
  output (it must never block while holding the node lock) and ``flush()``
  when the socket is writable;
- a worker uses a blocking socket and ``send()``.
Both read with ``read_messages()``, which returns every whole message that
has arrived.
"""
from __future__ import annotations

import pickle
import socket
import struct
import threading

HEADER = struct.Struct("<I")        # every frame's length prefix (workers and cluster)
_RECV_CHUNK = 1 << 18
MAX_FRAME = 1 << 31


class ConnectionClosed(Exception):
    """The peer closed the connection or died."""


def encode(message: tuple) -> bytes:
    payload = pickle.dumps(message, protocol=5)
    return HEADER.pack(len(payload)) + payload


class Connection:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._inbuf = bytearray()
        self._out: list[bytes] = []
        self._out_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- blocking side (workers) ------------------------------------------
    def send(self, message: tuple) -> None:
        data = encode(message)
        with self._send_lock:
            try:
                self.sock.sendall(data)
            except OSError as e:
                raise ConnectionClosed(str(e)) from None

    def send_many(self, messages: list[tuple]) -> None:
        if messages:
            data = b"".join([encode(m) for m in messages])
            with self._send_lock:
                try:
                    self.sock.sendall(data)
                except OSError as e:
                    raise ConnectionClosed(str(e)) from None

    # -- non-blocking side (the node loop) ---------------------------------
    def queue(self, message: tuple) -> bool:
        """Buffer a message and try to send what is buffered without blocking.
        Returns True when data is left over, so the caller must watch for the
        socket becoming writable and call ``flush``."""
        data = encode(message)
        with self._out_lock:
            if self.closed:
                return False
            if self._out:
                self._out.append(data)
                return True
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                return False  # the reader side notices the death
            if sent < len(data):
                self._out.append(data[sent:])
                return True
            return False

    def flush(self) -> bool:
        """Send buffered output; True while some is still left."""
        with self._out_lock:
            while self._out:
                data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
                self._out.clear()
                try:
                    sent = self.sock.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    return False
                if sent < len(data):
                    self._out.append(data[sent:])
                    return True
            return False

    # -- reading (both sides) ----------------------------------------------
    def read_messages(self) -> list[tuple]:
        """Read what is available (blocking sockets block until some bytes
        arrive) and return the whole messages among it."""
        try:
            chunk = self.sock.recv(_RECV_CHUNK)
        except BlockingIOError:
            return []
        except OSError as e:
            raise ConnectionClosed(str(e)) from None
        if not chunk:
            raise ConnectionClosed("peer closed the connection")
        buf = self._inbuf
        buf += chunk
        messages = []
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            (size,) = HEADER.unpack_from(buf, pos)
            if size > MAX_FRAME:
                raise ConnectionClosed(f"oversized frame ({size} bytes)")
            end = pos + 4 + size
            if end > n:
                break
            messages.append(pickle.loads(memoryview(buf)[pos + 4:end]))
            pos = end
        if pos:
            del buf[:pos]
        return messages

    def close(self) -> None:
        with self._out_lock:
            self.closed = True
            self._out.clear()
        try:
            self.sock.close()
        except OSError:
            pass
