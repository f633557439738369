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
# Reads go into one reused buffer per thread: ``sock.recv(256 KiB)`` would
# allocate (and give back) 256 KiB per call, which costs ~12 us here, more
# than the system call itself for a small message.
_reading = threading.local()


def _take_buffer() -> memoryview:
    """This thread's read buffer, taken until ``_give_back`` (a read nested
    in another on the same thread gets a new one rather than overwrite it)."""
    view = getattr(_reading, "view", None)
    _reading.view = None
    return view if view is not None else memoryview(bytearray(_RECV_CHUNK))


def _give_back(view: memoryview) -> None:
    _reading.view = view
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
        view = _take_buffer()
        try:
            return self._parse(view, self.sock.recv_into(view))
        except BlockingIOError:
            return []
        except OSError as e:
            raise ConnectionClosed(str(e)) from None
        finally:
            _give_back(view)

    def _parse(self, view: memoryview, got: int) -> list[tuple]:
        """The whole messages among what is buffered and ``got`` new bytes in
        ``view``; a frame's start that has not all arrived stays buffered."""
        if not got:
            raise ConnectionClosed("peer closed the connection")
        buf = self._inbuf
        if buf:                       # a frame begun in an earlier read: join them
            buf += view[:got]
            data = memoryview(buf)
        else:                         # the usual case: parse straight from the buffer
            data = view[:got]
        messages = []
        pos = 0
        n = len(data)
        try:
            while n - pos >= 4:
                (size,) = HEADER.unpack_from(data, pos)
                if size > MAX_FRAME:
                    raise ConnectionClosed(f"oversized frame ({size} bytes)")
                end = pos + 4 + size
                if end > n:
                    break
                messages.append(pickle.loads(data[pos + 4:end]))
                pos = end
        finally:
            joined = bool(buf)
            data.release()
            if joined:                # drop what was parsed; no copy while a frame grows
                if pos:
                    del buf[:pos]
            elif pos < n:             # keep a frame's start for the next read
                buf += view[pos:got]
        return messages

    def close(self) -> None:
        with self._out_lock:
            self.closed = True
            self._out.clear()
        try:
            self.sock.close()
        except OSError:
            pass
