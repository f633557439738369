"""The ring backend: members on different machines, over TCP.

Each member listens on its node's address before the group forms and
publishes (host, port) through the rendezvous. Then every pair connects once
(the lower rank dials), proving the per-group secret with the cluster's
handshake (cluster/auth.py) before anything else is read; only raw numbers
cross these connections, never pickles.

Every message is a 24-byte header (operation kind, step, payload bytes) and
the payload, received straight into numpy memory (``recv_into``). A member
that sees a header it did not expect (another operation, another size)
raises a CollectiveError naming both. Sends run on one sender thread per
peer (started on the first message to it), so that a member sends to its
right neighbour while it receives from its left one, and a message waiting
for one peer to read never holds up another's; the ring algorithms are the
bandwidth-optimal ones:

- allreduce: reduce-scatter then all-gather around the ring, each of the
  2(p-1) steps moving 1/p of the data, in segments of ``SEGMENT`` bytes so
  that reducing one segment overlaps receiving the next;
- broadcast: a pipelined chain from the root; allgather: p-1 ring steps;
- reducescatter: the first half of allreduce; reduce: that, then each rank
  sends the chunk it completed to the root; alltoall: p-1 pairwise steps;
- send/recv: straight on the pair's connection; ``send`` queues a copy and
  returns, so two members may send to each other before either receives
  (messages between a pair, collective or not, arrive in the order sent).

A member that dies closes its connections: the others' pending receive
fails at once. A machine that vanishes sends nothing, so two more checks
bound how long the others wait for it (docs/collective.md, Failure):

- TCP keepalive on every connection (first probe after KEEPALIVE_IDLE_S of
  silence, then every KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES of them): a
  receive fails with ETIMEDOUT about 7 s after the peer was last heard.
  The kernel probes only while nothing of ours is unacknowledged, so this
  covers a member waiting to receive, not one whose data is still in
  flight or stuck behind the peer's full receive window. (TCP_USER_TIMEOUT
  would cover those, but it also kills the connection to a live peer that
  is merely not reading yet, e.g. a straggler, so it is not set.)
- while a receive or a flush has waited POLL_S with nothing arriving, it
  asks whether the peer's node is still in this node's view of the cluster
  (``shoal.nodes()``); once the head declares it dead (node_timeout_s) the
  wait fails naming the rank.

A member that hangs is caught by the group's timeout.
"""
from __future__ import annotations

import errno
import queue
import socket
import struct
import threading
import time

import numpy as np

from ..cluster.auth import client_handshake, server_handshake
from ..exceptions import CollectiveError
from .liveness import Others
from .shm import (ALLGATHER, ALLREDUCE, ALLTOALL, BARRIER, BROADCAST, OP_NAMES, REDUCE,
                  REDUCESCATTER)
from .tensors import ReduceOp, check_mean, finish_mean, reduce_into, split_bounds

HEADER = struct.Struct("!QQQ")       # kind, step, payload bytes
SEGMENT = 1 << 20
P2P = 100
POLL_S = 1.0                # a wait with nothing arriving checks the peer's node this often
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 2, 1, 5
KEEPALIVE_BOUND_S = KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_PROBES


def listen(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    sock.listen(64)
    return sock


class RingGroup:
    backend = "ring"

    def __init__(self, name: str, rank: int, world: int, members: list[dict], secret: str,
                 timeout_s: float, listener: socket.socket):
        self.name, self.rank, self.world, self.timeout_s = name, rank, world, timeout_s
        self.closed = False
        self.conns: dict[int, socket.socket] = {}
        self._connect(members, secret, listener)
        self._others = Others({r: m for r, m in enumerate(members) if r != rank},
                              here=members[rank].get("node_id"))
        self.right = self.conns.get((rank + 1) % world)
        self.left = self.conns.get((rank - 1) % world)
        self._senders: dict[int, _Sender] = {}
        self._tmp = np.empty(0, np.uint8)

    # ---------------------------------------------------------------- set up
    def _connect(self, members, secret, listener) -> None:
        accepted: dict[int, socket.socket] = {}
        errors: list[BaseException] = []
        expected = self.rank               # ranks below me dial me

        def accept_all():
            listener.settimeout(self.timeout_s)
            try:
                while len(accepted) < expected:
                    sock, _ = listener.accept()
                    sock.settimeout(self.timeout_s)
                    server_handshake(sock, secret, "node", self.timeout_s)
                    (r,) = struct.unpack("!Q", _recv_exact(sock, 8))
                    if not 0 <= r < self.rank or r in accepted:
                        sock.close()
                        continue
                    accepted[r] = sock
            except BaseException as e:      # reported below
                errors.append(e)

        t = threading.Thread(target=accept_all, daemon=True)
        t.start()
        try:
            for r in range(self.rank + 1, self.world):
                host, port = members[r]["ring_address"]
                sock = socket.create_connection((host, port), timeout=self.timeout_s)
                client_handshake(sock, secret, "node")
                sock.sendall(struct.pack("!Q", self.rank))
                self.conns[r] = sock
            t.join(self.timeout_s + 1)
        finally:
            listener.close()
        if errors or len(accepted) < expected:
            for s in list(self.conns.values()) + list(accepted.values()):
                s.close()
            raise CollectiveError(f"collective group {self.name!r}: rank {self.rank} could not "
                                  f"connect to all members: {errors[0] if errors else 'timeout'}")
        self.conns.update(accepted)
        for sock in self.conns.values():
            sock.settimeout(POLL_S)     # receives; each sender has a dup with timeout_s
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)

    # ---------------------------------------------------------------- transport
    def _post(self, peer: int, kind: int, step: int, payload) -> None:
        """Queue a message for ``peer``'s sender thread (``payload`` must not
        change until ``_flush``)."""
        data = None if payload is None else memoryview(payload).cast("B")
        kind |= _dtype_tag(payload)
        header = HEADER.pack(kind, step, 0 if data is None else len(data))
        sender = self._senders.get(peer)
        if sender is None:
            sender = self._senders[peer] = _Sender(self.conns[peer], self.timeout_s,
                                                   f"{self.name}-{peer}")
        sender.jobs.put((header, data))

    def _flush(self) -> None:
        """Wait until everything queued was sent (to the kernel)."""
        markers = []
        for sender in self._senders.values():
            marker = threading.Event()
            sender.jobs.put(marker)
            markers.append(marker)
        deadline = time.monotonic() + self.timeout_s
        for (peer, sender), marker in zip(self._senders.items(), markers):
            while not marker.wait(POLL_S):
                if sender.error is not None:
                    break
                if time.monotonic() >= deadline:
                    self._fail(f"timed out after {self.timeout_s:g} s sending to rank {peer} "
                               f"(it is not receiving)")
                self._check_node(peer, "sending to it")
        for peer, sender in self._senders.items():
            if sender.error is not None:
                self._fail(f"sending to rank {peer} failed: {_why(sender.error)}")

    def _check_node(self, peer: int, what: str) -> None:
        lost = self._others.lost(peer)
        if lost:
            self._fail(f"{lost} (while {what})")

    def _recv(self, peer: int, kind: int, step: int, out, op: ReduceOp | None = None) -> None:
        """Receive ``peer``'s message into ``out``; with ``op``, reduce it into
        ``out`` instead, a segment at a time through a SEGMENT-sized scratch:
        the kernel receives the next segment while this one is reduced, and
        the scratch stays in cache."""
        sock = self.conns[peer]
        view = memoryview(out).cast("B")
        kind |= _dtype_tag(out)
        deadline = time.monotonic() + self.timeout_s

        def waiting():              # POLL_S passed with nothing from the peer
            if time.monotonic() >= deadline:
                self._fail(f"timed out after {self.timeout_s:g} s waiting for rank {peer}")
            self._check_node(peer, "waiting for it")

        try:
            header = bytearray(HEADER.size)
            _recv_into(sock, memoryview(header), waiting)
            k, s, n = HEADER.unpack(header)
            if (k, s, n) != (kind, step, len(view)):
                self._fail(f"rank {peer} sent {_describe(k)} ({n} bytes), rank {self.rank} "
                           f"expected {_describe(kind)} ({len(view)} bytes): members called "
                           f"different operations")
            if op is None:
                _recv_into(sock, view, waiting)
                return
            per = max(1, SEGMENT // out.itemsize)
            tmp = self._scratch(out.dtype, min(per, out.size))
            for lo in range(0, out.size, per):
                part = out[lo:lo + per]
                got = tmp[:part.size]
                _recv_into(sock, memoryview(got).cast("B"), waiting)
                reduce_into(part, [got], op)
        except OSError as e:
            self._fail(f"{_lost_connection(peer, e)} (while waiting for it)"
                       if e.errno == errno.ETIMEDOUT else
                       f"lost the connection to rank {peer}: it died or gave up on the group "
                       f"({e})")

    def _fail(self, why: str):
        self._close()
        raise CollectiveError(f"collective group {self.name!r}: {why}")

    def _check(self) -> None:
        if self.closed:
            raise CollectiveError(f"collective group {self.name!r} was destroyed or failed")

    def _scratch(self, dtype, n: int) -> np.ndarray:
        need = n * np.dtype(dtype).itemsize
        if self._tmp.nbytes < need:
            self._tmp = np.empty(need, np.uint8)
        return self._tmp[:need].view(dtype)

    # ---------------------------------------------------------------- operations
    def _reduce_scatter_ring(self, data: np.ndarray, bounds, op: ReduceOp, kind: int) -> None:
        """After this, chunk (rank+1) % p of ``data`` holds the full reduction."""
        p, r = self.world, self.rank
        for step in range(p - 1):
            send_c, recv_c = (r - step) % p, (r - step - 1) % p
            s_lo, s_hi = bounds[send_c]
            r_lo, r_hi = bounds[recv_c]
            self._post(self.rank_right, kind, step, data[s_lo:s_hi])
            self._recv(self.rank_left, kind, step, data[r_lo:r_hi], op)

    def _all_gather_ring(self, data: np.ndarray, bounds, kind: int, first: int) -> None:
        """Pass complete chunks around: at the start each rank holds chunk
        (rank + first) % p complete; at the end it holds all of them."""
        p, r = self.world, self.rank
        for step in range(p - 1):
            send_c, recv_c = (r + first - step) % p, (r + first - step - 1) % p
            s_lo, s_hi = bounds[send_c]
            r_lo, r_hi = bounds[recv_c]
            self._post(self.rank_right, kind, 1000 + step, data[s_lo:s_hi])
            self._recv(self.rank_left, kind, 1000 + step, data[r_lo:r_hi])

    @property
    def rank_right(self) -> int:
        return (self.rank + 1) % self.world

    @property
    def rank_left(self) -> int:
        return (self.rank - 1) % self.world

    def allreduce(self, a: np.ndarray, op: ReduceOp, kind: int = ALLREDUCE) -> None:
        self._check()
        check_mean(a, op)
        if self.world == 1:
            return
        bounds = split_bounds(a.size, self.world, max(1, 64 // a.dtype.itemsize))
        self._reduce_scatter_ring(a, bounds, op, kind)
        self._flush()
        mine = bounds[(self.rank + 1) % self.world]
        if op is ReduceOp.MEAN:
            finish_mean(a[mine[0]:mine[1]], self.world)
        self._all_gather_ring(a, bounds, kind, 1)
        self._flush()

    def reduce(self, a: np.ndarray, root: int, op: ReduceOp) -> None:
        """A reduce-scatter, then every rank sends the chunk it completed
        to the root: half the traffic of an allreduce."""
        self._check()
        check_mean(a, op)
        if self.world == 1:
            return
        data = a if self.rank == root else a.copy()
        bounds = split_bounds(a.size, self.world, max(1, 64 // a.dtype.itemsize))
        self._reduce_scatter_ring(data, bounds, op, REDUCE)
        self._flush()
        lo, hi = bounds[(self.rank + 1) % self.world]
        if op is ReduceOp.MEAN:
            finish_mean(data[lo:hi], self.world)
        if self.rank != root:
            self._post(root, REDUCE, 2000, data[lo:hi])
            self._flush()
            return
        for r in range(self.world):
            if r != root:
                lo, hi = bounds[(r + 1) % self.world]
                self._recv(r, REDUCE, 2000, data[lo:hi])

    def broadcast(self, a: np.ndarray, root: int) -> None:
        self._check()
        if self.world == 1:
            return
        pos = (self.rank - root) % self.world        # place along the chain from the root
        bounds = [(lo, hi) for lo, hi in split_bounds(a.size, max(1, -(-a.nbytes // SEGMENT)))]
        for i, (lo, hi) in enumerate(bounds):
            if pos > 0:
                self._recv(self.rank_left, BROADCAST, i, a[lo:hi])
            if pos < self.world - 1:
                self._post(self.rank_right, BROADCAST, i, a[lo:hi])
        self._flush()

    def allgather(self, outs: list[np.ndarray], a: np.ndarray) -> None:
        self._check()
        n = a.size
        data = np.empty(n * self.world, a.dtype)
        data[self.rank * n:(self.rank + 1) * n] = a
        bounds = [(r * n, (r + 1) * n) for r in range(self.world)]
        self._all_gather_ring(data, bounds, ALLGATHER, 0)
        self._flush()
        for r, out in enumerate(outs):
            np.copyto(out, data[r * n:(r + 1) * n])

    def reducescatter(self, out: np.ndarray, ins: list[np.ndarray], op: ReduceOp) -> None:
        self._check()
        check_mean(out, op)
        m = out.size
        data = np.concatenate([x.reshape(-1) for x in ins]) if self.world > 1 else ins[0].copy()
        bounds = [(r * m, (r + 1) * m) for r in range(self.world)]
        # rotate so that rank r ends up holding chunk r: the ring leaves chunk
        # (rank + 1) complete, so feed it chunk order shifted by one
        shifted = np.concatenate([data[((r - 1) % self.world) * m:((r - 1) % self.world + 1) * m]
                                  for r in range(self.world)])
        self._reduce_scatter_ring(shifted, bounds, op, REDUCESCATTER)
        self._flush()
        c = (self.rank + 1) % self.world
        np.copyto(out, shifted[c * m:(c + 1) * m])
        if op is ReduceOp.MEAN:
            finish_mean(out, self.world)

    def alltoall(self, outs: list[np.ndarray], ins: list[np.ndarray]) -> None:
        self._check()
        np.copyto(outs[self.rank], ins[self.rank])
        for step in range(1, self.world):
            to, frm = (self.rank + step) % self.world, (self.rank - step) % self.world
            self._post(to, ALLTOALL, step, ins[to])
            self._recv(frm, ALLTOALL, step, outs[frm])
        self._flush()

    def barrier(self) -> None:
        self.allreduce(np.zeros(self.world, np.uint8), ReduceOp.SUM, BARRIER)

    def send(self, a: np.ndarray, dst: int) -> None:
        """Queue a copy of ``a`` for ``dst`` and return; an error sending it
        surfaces in this member's next operation (or destroy)."""
        self._check()
        sender = self._senders.get(dst)
        if sender is not None and sender.error is not None:
            self._fail(f"sending to rank {dst} failed: {_why(sender.error)}")
        self._post(dst, P2P, 0, a.copy())

    def recv(self, a: np.ndarray, src: int) -> None:
        self._check()
        self._recv(src, P2P, 0, a)

    def destroy(self) -> None:
        """Leave the group once what this member sent has gone out (bounded
        by the group's timeout, like every operation)."""
        if self.closed:
            return
        self._flush()
        self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sender in self._senders.values():
            sender.jobs.put(None)
        for sock in self.conns.values():
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class _Sender:
    """One thread sending queued messages to one peer, in order, on a dup of
    the connection whose timeout is the group's (the receiving side polls).
    An Event on the queue is set once everything before it was sent; None
    ends the thread. After an error it sends nothing more (the group then
    fails)."""

    def __init__(self, sock: socket.socket, timeout_s: float, name: str):
        self.sock = sock.dup()
        self.sock.settimeout(timeout_s)
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"shoal-collective-{name}")
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                job = self.jobs.get()
                if job is None:
                    return
                if isinstance(job, threading.Event):
                    job.set()
                    continue
                header, payload = job
                try:
                    if self.error is None:
                        self.sock.sendall(header)
                        if payload is not None and len(payload):
                            self.sock.sendall(payload)
                except BaseException as e:
                    self.error = e
        finally:
            self.sock.close()


def _dtype_tag(a) -> int:
    return 0 if a is None else np.dtype(a.dtype).num << 16


def _describe(kind: int) -> str:
    from .shm import _DTYPES
    name = "send/recv" if (kind & 0xFFFF) == P2P else OP_NAMES.get(kind & 0xFFFF, kind & 0xFFFF)
    dtype = kind >> 16
    return f"{name} of {_DTYPES.get(dtype, '?')}" if dtype else str(name)


def _why(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno == errno.ETIMEDOUT:
        return f"its machine stopped answering ({e})"
    return str(e)


def _lost_connection(peer: int, e: OSError) -> str:
    return (f"rank {peer}'s machine stopped answering (no reply to TCP keepalive probes for "
            f"about {KEEPALIVE_BOUND_S} s: {e})")


def _recv_into(sock: socket.socket, view: memoryview, waiting=None) -> None:
    """Fill ``view`` from ``sock``. Each time the socket's own timeout passes
    with nothing arriving, ``waiting()`` decides (raising to give up)."""
    got, n = 0, len(view)
    while got < n:
        try:
            r = sock.recv_into(view[got:], n - got)
        except TimeoutError as e:
            if e.errno is not None or waiting is None:     # ETIMEDOUT: keepalive gave up
                raise
            waiting()
            continue
        if r == 0:
            raise ConnectionError("connection closed")
        got += r


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    _recv_into(sock, memoryview(buf))
    return bytes(buf)
