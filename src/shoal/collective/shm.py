"""The shared-memory backend: members on one machine, no sockets.

Every member owns its buffers: memfds it creates and grows, which the others
open through ``/proc/PID/fd/N`` and map (the kernel frees a memfd when its
last user goes, so a killed member leaks nothing). Rank 0 also owns the
control block, one 64-byte line per rank plus one per (sender, receiver)
pair, each field written by one process only:

    rank line   STEP   phases this rank finished (all ranks move in step)
                OP     what the current operation is (kind, dtype, op, root)
                NBYTES its size; checked equal on every rank, else an error
                FD GEN CAP   where this rank's slot is (re-mapped on GEN change)
                ABORT  nonzero once this rank gave up on the group
    pair line   SENT (sender) RECV (receiver) FD GEN CAP NBYTES: a one-deep
                mailbox for send/recv

An operation: wait until everyone finished reading the previous one (their
STEP), copy the input into my slot, announce OP/NBYTES and a phase, wait for
all; then the work is split: for allreduce each rank reduces 1/p of every
slot into its own slot (the reduce-scatter half) and, after one more phase,
copies the reduced parts out (the all-gather half). Small allreduces (up to
64 KiB) skip the second phase: every rank reduces all slots itself, in rank
order, so every rank gets the same bits.
"""
from __future__ import annotations

import mmap
import os

import numpy as np

from ..exceptions import CollectiveError
from .tensors import OP_CODES, ReduceOp, check_mean, finish_mean, reduce_into, split_bounds
from .waiting import Member, wait_until

STEP, OP, NBYTES, FD, GEN, CAP, ABORT = range(7)
SENT, RECV, PFD, PGEN, PCAP, PNBYTES = range(6)
LINE = 8                      # int64 fields per line (64 bytes)
SMALL = 64 * 1024
PAGE = mmap.PAGESIZE

ALLREDUCE, REDUCE, BROADCAST, ALLGATHER, REDUCESCATTER, ALLTOALL, BARRIER = range(1, 8)
OP_NAMES = {ALLREDUCE: "allreduce", REDUCE: "reduce", BROADCAST: "broadcast",
            ALLGATHER: "allgather", REDUCESCATTER: "reducescatter", ALLTOALL: "alltoall",
            BARRIER: "barrier"}
ABORTED, DESTROYED = 1, 2


def ctl_bytes(world: int) -> int:
    return (world + world * world) * LINE * 8


def create_ctl(world: int) -> tuple[int, mmap.mmap]:
    """Rank 0's control block (before the group forms): (fd, mapping)."""
    fd = os.memfd_create("shoal-collective-ctl", os.MFD_CLOEXEC)
    size = -(-ctl_bytes(world) // PAGE) * PAGE
    os.ftruncate(fd, size)
    return fd, mmap.mmap(fd, size)


def _open_peer_fd(pid: int, fd: int, size: int) -> mmap.mmap:
    try:
        local = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR)
    except OSError as e:
        raise CollectiveError(
            f"cannot open shared memory of member pid {pid} ({e}); "
            "use backend='ring' where /proc/PID/fd is not readable") from None
    try:
        return mmap.mmap(local, size)
    finally:
        os.close(local)


def _describe(code: int, nbytes: int) -> str:
    kind, red, dtype, root = code & 0xFF, (code >> 8) & 0xFF, (code >> 16) & 0xFFFF, code >> 32
    name = OP_NAMES.get(kind, f"op {kind}")
    parts = [f"{nbytes} bytes"]
    if kind not in (BARRIER,):
        parts.insert(0, str(_DTYPES.get(dtype, f"dtype #{dtype}")))
    if kind in (ALLREDUCE, REDUCE, REDUCESCATTER):
        parts.insert(0, list(ReduceOp)[red].name)
    if kind in (REDUCE, BROADCAST):
        parts.append(f"root {root}")
    return f"{name}({', '.join(parts)})"


_DTYPES = {np.dtype(t).num: np.dtype(t) for t in set(np.sctypeDict.values())
           if np.dtype(t).kind in "biufc"}


def _dtype_num(dtype: np.dtype) -> int:
    return np.dtype(dtype).num


class _Region:
    """A memfd this process owns and grows."""

    def __init__(self):
        self.fd, self.mm, self.cap, self.gen = -1, None, 0, 0

    def ensure(self, n: int) -> bool:
        if n <= self.cap:
            return False
        cap = -(-max(n, 2 * self.cap, PAGE) // PAGE) * PAGE
        fd = os.memfd_create("shoal-collective", os.MFD_CLOEXEC)
        os.ftruncate(fd, cap)
        mm = mmap.mmap(fd, cap)
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.mm, self.cap = fd, mm, cap
        self.gen += 1
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.mm, self.cap = -1, None, 0


class ShmGroup:
    backend = "shm"

    def __init__(self, name: str, rank: int, world: int, members: list[dict],
                 timeout_s: float, ctl=None):
        self.name, self.rank, self.world, self.timeout_s = name, rank, world, timeout_s
        self.members = [Member(r, m["pid"], m["started"]) for r, m in enumerate(members)]
        self.others = [m for m in self.members if m.rank != rank]
        if rank == 0:
            self._ctl_fd, mm = ctl
        else:
            self._ctl_fd = -1
            mm = _open_peer_fd(members[0]["pid"], members[0]["ctl_fd"], ctl_bytes(world))
        self._ctl_mm = mm
        lines = np.frombuffer(mm, np.int64, (world + world * world) * LINE)
        self.ctl = lines[:world * LINE].reshape(world, LINE)
        self.pairs = lines[world * LINE:].reshape(world, world, LINE)
        self.me = self.ctl[rank]
        self.slot = _Region()
        self.outbox: dict[int, _Region] = {}
        self._maps: dict[tuple, tuple[int, mmap.mmap]] = {}
        self.step = 0
        self.closed = False

    # ---------------------------------------------------------------- sync
    def _failed(self) -> str | None:
        aborted = np.flatnonzero(self.ctl[:, ABORT])
        if len(aborted):
            r = int(aborted[0])
            why = "left the group" if self.ctl[r, ABORT] == DESTROYED else "gave up on the group"
            return f"rank {r} {why}"
        return None

    def _wait(self, ready, what: str, members=None) -> None:
        try:
            wait_until(ready, group=self.name, what=what,
                       members=self.others if members is None else members,
                       timeout_s=self.timeout_s, failed=self._failed)
        except CollectiveError:
            self._abort()
            raise

    def _abort(self, code: int = ABORTED) -> None:
        if not self.closed:
            self.me[ABORT] = code

    def _phase(self, what: str) -> None:
        """Mark a phase done here and wait until every rank did it too."""
        self.step += 1
        self.me[STEP] = self.step
        steps, target = self.ctl[:, STEP], self.step
        self._wait(lambda: steps.min() >= target, what)

    def _begin(self, kind: int, dtype, nbytes: int, slot_bytes: int, red: int = 0,
               root: int = 0) -> None:
        if self.closed:
            raise CollectiveError(f"collective group {self.name!r} was destroyed")
        failed = self._failed()
        if failed:
            raise CollectiveError(f"collective group {self.name!r}: {failed}")
        steps, target = self.ctl[:, STEP], self.step
        # everyone has finished reading the slots of the previous operation
        self._wait(lambda: steps.min() >= target, f"starting {OP_NAMES[kind]}")
        if self.slot.ensure(slot_bytes):
            self.me[FD], self.me[GEN], self.me[CAP] = self.slot.fd, self.slot.gen, self.slot.cap
        self.me[OP] = kind | (red << 8) | (_dtype_num(dtype) << 16 if dtype is not None else 0) \
            | (root << 32)
        self.me[NBYTES] = nbytes

    def _check_same(self) -> None:
        ops, sizes = self.ctl[:, OP], self.ctl[:, NBYTES]
        if (ops == ops[self.rank]).all() and (sizes == sizes[self.rank]).all():
            return
        calls = "; ".join(f"rank {r}: {_describe(int(ops[r]), int(sizes[r]))}"
                          for r in range(self.world))
        self._abort()
        raise CollectiveError(f"collective group {self.name!r}: members called different "
                              f"operations ({calls})")

    def _end(self) -> None:
        """Done reading others' slots; the next operation waits for this."""
        self.step += 1
        self.me[STEP] = self.step

    # ---------------------------------------------------------------- buffers
    def _my_slot(self, dtype, count: int, offset: int = 0) -> np.ndarray:
        return np.frombuffer(self.slot.mm, dtype, count, offset)

    def _slot_of(self, r: int, dtype, count: int, offset: int = 0) -> np.ndarray:
        if r == self.rank:
            return self._my_slot(dtype, count, offset)
        line = self.ctl[r]
        mm = self._peer_map(("slot", r), r, int(line[FD]), int(line[GEN]), int(line[CAP]))
        return np.frombuffer(mm, dtype, count, offset)

    def _peer_map(self, key, r: int, fd: int, gen: int, cap: int) -> mmap.mmap:
        cached = self._maps.get(key)
        if cached is not None and cached[0] == gen:
            return cached[1]
        mm = _open_peer_fd(self.members[r].pid, fd, cap)
        self._maps[key] = (gen, mm)
        return mm

    # ---------------------------------------------------------------- operations
    def allreduce(self, a: np.ndarray, op: ReduceOp) -> None:
        self._reduce(ALLREDUCE, a, None, op)

    def reduce(self, a: np.ndarray, root: int, op: ReduceOp) -> None:
        self._reduce(REDUCE, a, root, op)

    def _reduce(self, kind: int, a: np.ndarray, root: int | None, op: ReduceOp) -> None:
        """allreduce (root None: every rank gets the result) or reduce."""
        check_mean(a, op)
        n, dt = a.size, a.dtype
        self._begin(kind, dt, a.nbytes, a.nbytes, OP_CODES[op], root or 0)
        np.copyto(self._my_slot(dt, n), a)
        self._phase(f"waiting for {OP_NAMES[kind]} inputs")
        self._check_same()
        slots = [self._slot_of(r, dt, n) for r in range(self.world)]
        if root is None and a.nbytes <= SMALL:
            np.copyto(a, slots[0])
            reduce_into(a, slots[1:], op)
            if op is ReduceOp.MEAN:
                finish_mean(a, self.world)
            self._end()
            return
        bounds = split_bounds(n, self.world, max(1, 64 // dt.itemsize))
        lo, hi = bounds[self.rank]
        mine = slots[self.rank][lo:hi]
        reduce_into(mine, [slots[r][lo:hi] for r in range(self.world) if r != self.rank], op)
        if op is ReduceOp.MEAN:
            finish_mean(mine, self.world)
        self._phase("waiting for the reduced parts")
        if root is None or self.rank == root:
            for r, (lo, hi) in enumerate(bounds):
                np.copyto(a[lo:hi], slots[r][lo:hi])
        self._end()

    def broadcast(self, a: np.ndarray, root: int) -> None:
        n, dt = a.size, a.dtype
        self._begin(BROADCAST, dt, a.nbytes, a.nbytes if self.rank == root else 0, root=root)
        if self.rank == root:
            np.copyto(self._my_slot(dt, n), a)
        self._phase("waiting for the broadcast")
        self._check_same()
        if self.rank != root:
            np.copyto(a, self._slot_of(root, dt, n))
        self._end()

    def allgather(self, outs: list[np.ndarray], a: np.ndarray) -> None:
        n, dt = a.size, a.dtype
        self._begin(ALLGATHER, dt, a.nbytes, a.nbytes)
        np.copyto(self._my_slot(dt, n), a)
        self._phase("waiting for allgather inputs")
        self._check_same()
        for r, out in enumerate(outs):
            np.copyto(out, a if r == self.rank else self._slot_of(r, dt, n))
        self._end()

    def reducescatter(self, out: np.ndarray, ins: list[np.ndarray], op: ReduceOp) -> None:
        check_mean(out, op)
        m, dt = out.size, out.dtype
        self._begin(REDUCESCATTER, dt, out.nbytes, out.nbytes * self.world, OP_CODES[op])
        mine = self._my_slot(dt, m * self.world)
        for r, x in enumerate(ins):
            np.copyto(mine[r * m:(r + 1) * m], x)
        self._phase("waiting for reducescatter inputs")
        self._check_same()
        part = slice(self.rank * m, (self.rank + 1) * m)
        np.copyto(out, self._slot_of(0, dt, m * self.world)[part])
        reduce_into(out, [self._slot_of(r, dt, m * self.world)[part]
                          for r in range(1, self.world)], op)
        if op is ReduceOp.MEAN:
            finish_mean(out, self.world)
        self._end()

    def alltoall(self, outs: list[np.ndarray], ins: list[np.ndarray]) -> None:
        m, dt = ins[0].size, ins[0].dtype
        self._begin(ALLTOALL, dt, ins[0].nbytes, ins[0].nbytes * self.world)
        mine = self._my_slot(dt, m * self.world)
        for r, x in enumerate(ins):
            np.copyto(mine[r * m:(r + 1) * m], x)
        self._phase("waiting for alltoall inputs")
        self._check_same()
        part = slice(self.rank * m, (self.rank + 1) * m)
        for r, out in enumerate(outs):
            np.copyto(out, self._slot_of(r, dt, m * self.world)[part])
        self._end()

    def barrier(self) -> None:
        self._begin(BARRIER, None, 0, 0)
        self._phase("waiting at the barrier")
        self._check_same()
        self._end()

    # ---------------------------------------------------------------- point to point
    def send(self, a: np.ndarray, dst: int) -> None:
        line = self.pairs[self.rank, dst]
        peer = [self.members[dst]]
        self._wait(lambda: line[RECV] >= line[SENT],
                   f"sending to rank {dst} (its previous message is not received yet)", peer)
        box = self.outbox.setdefault(dst, _Region())
        if box.ensure(a.nbytes):
            line[PFD], line[PGEN], line[PCAP] = box.fd, box.gen, box.cap
        np.copyto(np.frombuffer(box.mm, a.dtype, a.size), a)
        line[PNBYTES] = a.nbytes
        line[SENT] += 1

    def recv(self, a: np.ndarray, src: int) -> None:
        line = self.pairs[src, self.rank]
        self._wait(lambda: line[SENT] > line[RECV], f"receiving from rank {src}",
                   [self.members[src]])
        if line[PNBYTES] != a.nbytes:
            line[RECV] += 1           # consumed: the sender may go on
            raise CollectiveError(
                f"collective group {self.name!r}: rank {src} sent {int(line[PNBYTES])} bytes, "
                f"rank {self.rank} expected {a.nbytes}")
        mm = self._peer_map(("box", src), src, int(line[PFD]), int(line[PGEN]), int(line[PCAP]))
        np.copyto(a, np.frombuffer(mm, a.dtype, a.size))
        line[RECV] += 1

    def destroy(self) -> None:
        """Leave the group: wait (up to the group's timeout) until what this
        member sent was received, raising if a receiver died or left first,
        and briefly for slower members to finish reading the last operation."""
        if self.closed:
            return
        try:
            for dst in self.outbox:
                line = self.pairs[self.rank, dst]
                wait_until(lambda: line[RECV] >= line[SENT], group=self.name,
                           what=f"leaving: rank {dst} has not received this member's message",
                           members=[self.members[dst]], timeout_s=self.timeout_s,
                           failed=self._failed)
            # bounded: a member that died or gave up does not hold this up
            steps, target = self.ctl[:, STEP], self.step
            try:
                wait_until(lambda: steps.min() >= target, group=self.name, what="leaving",
                           members=self.others, timeout_s=min(self.timeout_s, 10.0),
                           failed=self._failed)
            except CollectiveError:
                pass
        finally:
            self._close()

    def _close(self) -> None:
        self._abort(DESTROYED)
        self.closed = True
        self.slot.close()
        for box in self.outbox.values():
            box.close()
        self._maps.clear()
        if self._ctl_fd >= 0:
            os.close(self._ctl_fd)
