"""The torch.distributed backends: "gloo" (CPU) and "nccl" (GPU).

shoal does the rendezvous torch needs: rank 0 opens a TCPStore on its node's
address (a free port, before the group forms) and publishes it; the others
connect to it after the rendezvous, under a prefix of the group's id. Each
group is its own ProcessGroupGloo/ProcessGroupNCCL object (not torch's
default group), so several groups live in one process; ``shoal.train`` makes
the default group itself for DistributedDataParallel. NCCL operates on the
CUDA tensors themselves: nothing goes through host memory.

send/recv carry a small header (bytes, dtype) before the payload, so a recv
of another size or dtype fails naming both instead of filling part of the
tensor. ``send`` posts the header and a copy of the tensor and returns: two
members may send to each other before either receives (gloo's own send
waits for the peer's recv). A failed operation names the members that
died, found by pid on this node and through shoal elsewhere.

A member's death: each group's watchdog thread (liveness.py) checks the
others while the group lives and on a death marks the group failed, so
every later operation raises naming the dead rank. On nccl it also aborts
the process group: NCCL's ``wait()`` does not block the host, so nothing
else would stop the GPU waiting (until NCCL's own watchdog kills the
process after ``timeout_s``). On gloo a pending collective is waited for
through its future, so it fails at once too (gloo cannot cancel it: once
the group is destroyed its process group is kept in _ABANDONED until the
operation ends, since destroying it sooner waits the operation out); a
pending send, recv or reducescatter has no
future (gloo completes those only inside ``wait()``) and fails when gloo
does: at once when a peer's process dies (the connection closes), else at
the timeout.
"""
from __future__ import annotations

import datetime
import threading
import time

from ..exceptions import CollectiveError
from .liveness import LOCAL_S, Others, Watchdog, describe
from .tensors import ReduceOp

# dtypes a send/recv header names, by position (-1: another one)
_P2P_DTYPES = ("float32", "float64", "float16", "bfloat16", "int8", "int16", "int32", "int64",
               "uint8", "bool", "complex64", "complex128")
DEAD_CHECK_S = 2.0       # how long a failure waits for the node to learn a remote member died
# gloo's own timeout fails a pending operation first; this one only backs it up
POLL_GRACE_S = 30.0
# (process group, futures) of groups closed with a gloo operation still pending:
# destroying such a group would wait for that operation to time out, so it is
# kept here until all those futures are done (gloo's own timeout ends them), then
# dropped by the next group that forms or closes in this process (reap_abandoned)
_ABANDONED: list = []


def reap_abandoned() -> None:
    """Drop the kept process groups whose pending operations have ended."""
    _ABANDONED[:] = [(pg, futures) for pg, futures in _ABANDONED
                     if not all(f.done() for f in futures)]


def open_store(host: str, world: int, timeout_s: float):
    import torch.distributed as dist
    return dist.TCPStore(host, 0, world, True, wait_for_workers=False,
                         timeout=datetime.timedelta(seconds=timeout_s))


def connect_store(members: list[dict], rank: int, world: int, timeout_s: float, store=None):
    import torch.distributed as dist
    if store is not None:
        return store
    host, port = members[0]["store_address"]
    return dist.TCPStore(host, port, world, False, timeout=datetime.timedelta(seconds=timeout_s))


def torch_reduce_op(op: ReduceOp):
    import torch.distributed as dist
    return {ReduceOp.SUM: dist.ReduceOp.SUM, ReduceOp.MEAN: dist.ReduceOp.SUM,
            ReduceOp.PRODUCT: dist.ReduceOp.PRODUCT, ReduceOp.MIN: dist.ReduceOp.MIN,
            ReduceOp.MAX: dist.ReduceOp.MAX}[op]


class TorchGroup:
    def __init__(self, name: str, rank: int, world: int, members: list[dict], group_id: str,
                 timeout_s: float, backend: str, host: str, store=None):
        import torch.distributed as dist
        self.name, self.rank, self.world, self.backend = name, rank, world, backend
        self.members, self.timeout_s = members, timeout_s
        reap_abandoned()
        self.closed = False
        self._sends: list = []        # (work, dst, tensor) posted by send(), not yet completed
        self.store = connect_store(members, rank, world, timeout_s, store)
        prefix = dist.PrefixStore(f"shoal/{group_id}", self.store)
        try:
            self.pg, self.device = self._make_pg(prefix, host,
                                                 datetime.timedelta(seconds=timeout_s))
        except CollectiveError:
            raise
        except Exception as e:
            raise CollectiveError(f"collective group {name!r}: torch {backend} could not "
                                  f"start: {e}") from None
        self._abandoned: list = []    # futures of gloo collectives left pending (see _ABANDONED)
        self._others = Others({r: m for r, m in enumerate(members) if r != rank},
                              here=members[rank]["node_id"])
        self._watchdog = Watchdog(name, self._others, self._on_death)
        self._watchdog.start()

    def _make_pg(self, prefix, host: str, timeout: datetime.timedelta):
        """The torch process group and the device its tensors live on."""
        import torch
        import torch.distributed as dist
        if self.backend == "gloo":
            opts = dist.ProcessGroupGloo._Options()
            opts._timeout = timeout
            opts._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
            return (dist.ProcessGroupGloo(prefix, self.rank, self.world, opts),
                    torch.device("cpu"))
        if not dist.is_nccl_available() or not torch.cuda.is_available():
            raise CollectiveError("backend 'nccl' needs torch with CUDA and a GPU "
                                  "assigned to every member (num_gpus=1)")
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return (dist.ProcessGroupNCCL(prefix, self.rank, self.world, opts),
                torch.device("cuda", torch.cuda.current_device()))

    def _on_death(self, why: str) -> None:
        """The watchdog saw a member die (on its thread): later operations
        raise; on nccl, abort the process group so that what the GPU waits
        for fails now. (gloo's abort cancels nothing in torch 2.13, not even
        a pending recv: gloo waits are watched instead, see _run.)"""
        if self.backend == "nccl" and hasattr(self.pg, "abort"):
            try:
                self.pg.abort()
            except Exception:          # noqa: BLE001 - the group is failed either way
                pass

    def _check(self, what: str) -> None:
        if self.closed:
            raise CollectiveError(f"collective group {self.name!r} was destroyed")
        if self._watchdog.failure:
            raise CollectiveError(f"collective group {self.name!r}: {self._watchdog.failure}; "
                                  f"the group failed before {what}")

    def _run(self, what: str, work, cancellable: bool = True) -> None:
        """Post ``work()`` and wait for it. On nccl ``wait()`` only makes the
        stream wait. On gloo a ``cancellable`` operation is waited for
        through its future, so the watchdog's verdict ends the wait; send,
        recv and reduce_scatter are not (gloo completes those only inside
        ``wait()``; they have no future)."""
        self._check(what)
        self._reap_sends(wait=False)
        try:
            posted = work()
            if self.backend == "gloo" and cancellable:
                self._wait_watched(posted, what)
            posted.wait()
        except CollectiveError:
            raise
        except Exception as e:
            raise self._failure(what, e) from None
        if self._watchdog.failure:
            raise CollectiveError(f"collective group {self.name!r}: {self._watchdog.failure} "
                                  f"(while {what})")

    def _wait_watched(self, posted, what: str) -> None:
        """Wait for a gloo collective, a LOCAL_S at a time, looking at the
        watchdog's verdict in between (its future's callback wakes us)."""
        done = threading.Event()
        try:
            future = posted.get_future()
        except RuntimeError:            # "not implemented" for this work: wait() it is
            return
        future.add_done_callback(lambda _: done.set())
        deadline = time.monotonic() + self.timeout_s + POLL_GRACE_S
        while not done.wait(LOCAL_S):
            failure = self._watchdog.failure
            if failure or time.monotonic() >= deadline:
                self._abandoned.append(future)
                why = failure or f"timed out after {self.timeout_s + POLL_GRACE_S:g} s"
                raise CollectiveError(f"collective group {self.name!r}: {why} (while {what})")

    def _failure(self, what: str, e: BaseException) -> CollectiveError:
        who = self._dead()
        return CollectiveError(f"collective group {self.name!r}: {what} failed in torch "
                               f"{self.backend}: {who + ' (' if who else ''}{e}"
                               f"{')' if who else ''}")

    def _dead(self) -> str:
        """The other members known to be dead: what the watchdog saw, else by
        pid on this node and through shoal (for DEAD_CHECK_S, while their
        node learns it) elsewhere; "" for none."""
        if self._watchdog.failure:
            return self._watchdog.failure
        dead = self._others.dead_here()
        deadline = time.monotonic() + DEAD_CHECK_S
        while not dead and self._others.remote:
            dead = self._others.dead_elsewhere()
            if dead or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        return describe(dead)

    def _reap_sends(self, wait: bool) -> None:
        """Forget completed sends; raise if one failed. With ``wait``, wait
        for all of them (bounded by the group's timeout)."""
        pending = []
        for work, dst, t in self._sends:
            if wait or work.is_completed():
                try:
                    work.wait(datetime.timedelta(seconds=self.timeout_s))
                except Exception as e:
                    self._sends = []
                    raise self._failure(f"send to rank {dst}", e) from None
            else:
                pending.append((work, dst, t))
        self._sends = pending

    def _check_mean(self, t, op: ReduceOp) -> None:
        if op is ReduceOp.MEAN and not (t.is_floating_point() or t.is_complex()):
            raise TypeError(f"ReduceOp.MEAN needs a floating-point tensor, got "
                            f"{str(t.dtype).replace('torch.', '')}")

    def _mean(self, t, op: ReduceOp) -> None:
        if op is ReduceOp.MEAN:
            t.div_(self.world)

    def allreduce(self, t, op: ReduceOp) -> None:
        import torch.distributed as dist
        self._check_mean(t, op)
        o = dist.AllreduceOptions()
        o.reduceOp = torch_reduce_op(op)
        self._run("allreduce", lambda: self.pg.allreduce([t], o))
        self._mean(t, op)

    def reduce(self, t, root: int, op: ReduceOp) -> None:
        import torch.distributed as dist
        self._check_mean(t, op)
        o = dist.ReduceOptions()
        o.reduceOp, o.rootRank = torch_reduce_op(op), root
        if self.rank != root:
            t = t.clone()         # torch uses a non-root's tensor as scratch
        self._run("reduce", lambda: self.pg.reduce([t], o))
        if self.rank == root:
            self._mean(t, op)

    def broadcast(self, t, root: int) -> None:
        import torch.distributed as dist
        o = dist.BroadcastOptions()
        o.rootRank = root
        self._run("broadcast", lambda: self.pg.broadcast([t], o))

    def allgather(self, outs: list, t) -> None:
        self._run("allgather", lambda: self.pg.allgather([outs], [t]))

    def reducescatter(self, out, ins: list, op: ReduceOp) -> None:
        import torch.distributed as dist
        self._check_mean(out, op)
        o = dist.ReduceScatterOptions()
        o.reduceOp = torch_reduce_op(op)
        # gloo completes a reduce_scatter only inside wait(): no future to watch
        self._run("reducescatter", lambda: self.pg.reduce_scatter([out], [ins], o),
                  cancellable=False)
        self._mean(out, op)

    def alltoall(self, outs: list, ins: list) -> None:
        import torch
        import torch.distributed as dist
        out = torch.empty(sum(x.numel() for x in outs), dtype=outs[0].dtype, device=outs[0].device)
        inp = torch.cat([x.reshape(-1) for x in ins])
        self._run("alltoall", lambda: self.pg.alltoall_base(out, inp, [], [],
                                                            dist.AllToAllOptions()))
        for x, part in zip(outs, out.split([x.numel() for x in outs])):
            x.copy_(part.reshape(x.shape))

    def barrier(self) -> None:
        import torch.distributed as dist
        self._run("barrier", lambda: self.pg.barrier(dist.BarrierOptions()))

    def send(self, t, dst: int) -> None:
        """Post the header and a copy of ``t`` (the caller may change ``t``
        once this returns) and return; waiting happens in later calls."""
        self._check(f"send to rank {dst}")
        self._reap_sends(wait=False)
        for x in (self._header(t), t.clone()):
            try:
                self._sends.append((self.pg.send([x], dst, 0), dst, x))
            except Exception as e:
                raise self._failure(f"send to rank {dst}", e) from None

    def recv(self, t, src: int) -> None:
        import torch
        header = torch.empty(2, dtype=torch.int64, device=self.device)
        self._run("recv", lambda: self.pg.recv([header], src, 0), cancellable=False)
        nbytes, code = header.tolist()
        want, want_code = self._header(t).tolist()
        if (nbytes, code) == (want, want_code):
            self._run("recv", lambda: self.pg.recv([t], src, 0), cancellable=False)
            return
        # take the payload off the pair's stream so that later messages still match
        drain = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        self._run("recv", lambda: self.pg.recv([drain], src, 0), cancellable=False)
        raise CollectiveError(f"collective group {self.name!r}: rank {src} sent "
                              f"{_dtype_name(code)} ({nbytes} bytes), rank {self.rank} expected "
                              f"{_dtype_name(want_code)} ({want} bytes): members called "
                              f"different operations")

    def _header(self, t):
        import torch
        name = str(t.dtype).replace("torch.", "")
        code = _P2P_DTYPES.index(name) if name in _P2P_DTYPES else -1
        return torch.tensor([t.numel() * t.element_size(), code], dtype=torch.int64,
                            device=self.device)

    def destroy(self) -> None:
        """Leave the group once this member's sends were received (bounded
        by the group's timeout; not waited for once a member died)."""
        if self.closed:
            return
        try:
            if not self._watchdog.failure:
                self._reap_sends(wait=True)
        finally:
            self._close()

    def _close(self) -> None:
        self.closed = True
        self._watchdog.stop()
        try:
            self.pg.abort() if self.backend == "nccl" else None
        except Exception:
            pass
        if self._abandoned:
            _ABANDONED.append((self.pg, self._abandoned))
            self._abandoned = []
        self.pg = None
        reap_abandoned()


def _dtype_name(code: int) -> str:
    return _P2P_DTYPES[code] if 0 <= code < len(_P2P_DTYPES) else "another dtype"
