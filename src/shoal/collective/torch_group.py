"""The torch.distributed backends: "gloo" (CPU) and "nccl" (GPU).

shoal does the rendezvous torch needs: rank 0 opens a TCPStore on its node's
address (a free port, before the group forms) and publishes it; the others
connect to it after the rendezvous, under a prefix of the group's id. Each
group is its own ProcessGroupGloo/ProcessGroupNCCL object (not torch's
default group), so several groups live in one process; ``shoal.train`` makes
the default group itself for DistributedDataParallel. NCCL operates on the
CUDA tensors themselves: nothing goes through host memory.
"""
from __future__ import annotations

import datetime

from ..exceptions import CollectiveError
from .tensors import ReduceOp


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
        import torch
        import torch.distributed as dist
        self.name, self.rank, self.world, self.backend = name, rank, world, backend
        self.closed = False
        timeout = datetime.timedelta(seconds=timeout_s)
        self.store = connect_store(members, rank, world, timeout_s, store)
        prefix = dist.PrefixStore(f"shoal/{group_id}", self.store)
        try:
            if backend == "gloo":
                opts = dist.ProcessGroupGloo._Options()
                opts._timeout = timeout
                opts._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
                self.pg = dist.ProcessGroupGloo(prefix, rank, world, opts)
                self.device = torch.device("cpu")
            else:
                if not dist.is_nccl_available() or not torch.cuda.is_available():
                    raise CollectiveError("backend 'nccl' needs torch with CUDA and a GPU "
                                          "assigned to every member (num_gpus=1)")
                opts = dist.ProcessGroupNCCL.Options()
                opts._timeout = timeout
                self.pg = dist.ProcessGroupNCCL(prefix, rank, world, opts)
                self.device = torch.device("cuda", torch.cuda.current_device())
        except CollectiveError:
            raise
        except Exception as e:
            raise CollectiveError(f"collective group {name!r}: torch {backend} could not "
                                  f"start: {e}") from None

    def _run(self, what: str, work) -> None:
        if self.closed:
            raise CollectiveError(f"collective group {self.name!r} was destroyed")
        try:
            work().wait()
        except Exception as e:
            raise CollectiveError(f"collective group {self.name!r}: {what} failed in torch "
                                  f"{self.backend}: {e}") from None

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
        self._run("reducescatter", lambda: self.pg.reduce_scatter([out], [ins], o))
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
        self._run("send", lambda: self.pg.send([t], dst, 0))

    def recv(self, t, src: int) -> None:
        self._run("recv", lambda: self.pg.recv([t], src, 0))

    def destroy(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.pg.abort() if self.backend == "nccl" else None
        except Exception:
            pass
        self.pg = None
