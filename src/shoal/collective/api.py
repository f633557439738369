"""``shoal.collective``: the public functions (Ray's ``ray.util.collective``
names), the per-process table of groups, and backend choice."""
from __future__ import annotations

import numpy as np

import shoal
from ..exceptions import CollectiveError
from . import rendezvous
from .tensors import Flat, ReduceOp, check_tensor, is_torch, reduce_op
from .waiting import my_identity

BACKENDS = ("auto", "shm", "ring", "gloo", "nccl")
DEFAULT_TIMEOUT_S = 1800.0

_groups: dict[str, object] = {}


# ---------------------------------------------------------------- groups
def init_collective_group(world_size: int, rank: int, backend: str = "auto",
                          group_name: str = "default", timeout_s: float | None = None) -> None:
    """Join ``group_name`` as ``rank`` of ``world_size``; returns once every
    member has joined (or raises CollectiveError naming the missing ranks).

    ``backend``: "auto" (NCCL when every member has a GPU and torch with
    CUDA; else shared memory when all members are on one machine, else the
    TCP ring), "shm", "ring", "gloo" or "nccl" (torch.distributed).
    ``timeout_s`` bounds forming the group and every operation in it."""
    _check_group_args(world_size, rank, backend, group_name)
    if group_name in _groups:
        raise CollectiveError(f"collective group {group_name!r} is already initialised in "
                              f"this process (rank {_groups[group_name].rank})")
    timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s)
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    ctx = shoal.get_runtime_context()
    host = _node_host(ctx.get_node_id())
    info = dict(my_identity(), node_id=ctx.get_node_id(), host=host, gpu=_has_cuda())
    listener = ctl = store = None
    try:
        if backend in ("auto", "ring"):
            from .ring import listen
            listener = listen(host)
            info["ring_address"] = (host, listener.getsockname()[1])
        if backend in ("auto", "shm") and rank == 0:
            from .shm import create_ctl
            ctl = create_ctl(world_size)
            info["ctl_fd"] = ctl[0]
        if rank == 0 and (backend in ("gloo", "nccl") or (backend == "auto" and info["gpu"])):
            from .torch_group import open_store
            store = open_store(host, world_size, timeout_s)
            info["store_address"] = (host, store.port)
        answer = rendezvous.join(group_name, rank, world_size, backend, info, timeout_s)
        members = answer["members"]
        chosen = backend
        if backend == "auto":
            if all(m["gpu"] for m in members):
                chosen = "nccl"         # GPU tensors stay on the GPUs
            elif len({m["node_id"] for m in members}) == 1:
                chosen = "shm"
            else:
                chosen = "ring"
        if chosen == "shm":
            from .shm import ShmGroup
            group = ShmGroup(group_name, rank, world_size, members, timeout_s, ctl)
            ctl = None
        elif chosen == "ring":
            from .ring import RingGroup
            group = RingGroup(group_name, rank, world_size, members, answer["secret"],
                              timeout_s, listener)
            listener = None
        else:
            from .torch_group import TorchGroup
            group = TorchGroup(group_name, rank, world_size, members, answer["group_id"],
                               timeout_s, chosen, host, store)
    finally:
        if listener is not None:
            listener.close()
        if ctl is not None:
            import os
            os.close(ctl[0])
        # rank 0's TCPStore, unless a torch group took it: dropping the last
        # reference stops its server (it has no close()); rebinding matters
        # when a traceback keeps this frame alive
        store = None
    _groups[group_name] = group


def create_collective_group(actors: list, world_size: int | None = None,
                            ranks: list[int] | None = None, backend: str = "auto",
                            group_name: str = "default", timeout_s: float | None = None) -> None:
    """Declare a group of actors (from the driver or any task): actor
    ``actors[i]`` gets rank ``ranks[i]`` (default i). Each actor joins on its
    first collective call with this ``group_name``."""
    actors = list(actors)
    world_size = len(actors) if world_size is None else world_size
    ranks = list(range(world_size)) if ranks is None else list(ranks)
    _check_group_args(world_size, 0, backend, group_name)
    if len(actors) != world_size or len(ranks) != world_size:
        raise ValueError(f"create_collective_group: {len(actors)} actors and {len(ranks)} ranks "
                         f"for world_size {world_size}; all three must agree")
    if sorted(ranks) != list(range(world_size)):
        raise ValueError(f"create_collective_group: ranks must be 0..{world_size - 1} once "
                         f"each, got {ranks}")
    for a in actors:
        if not isinstance(a, shoal.ActorHandle):
            raise TypeError(f"create_collective_group takes actor handles, got "
                            f"{type(a).__name__}")
    timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s)
    by_actor = {a._actor_id.hex(): r for a, r in zip(actors, ranks)}
    rendezvous.call(group_name, "declare", by_actor, world_size, backend, timeout_s)


def destroy_collective_group(group_name: str = "default") -> None:
    """Leave the group here (the others' pending and later operations fail
    with CollectiveError); from a non-member, forget a declared group."""
    group = _groups.pop(group_name, None)
    if group is not None:
        group.destroy()
        return
    actor = rendezvous.existing_rendezvous(group_name)
    if actor is not None:
        shoal.kill(actor)


def is_group_initialized(group_name: str = "default") -> bool:
    return group_name in _groups


def get_rank(group_name: str = "default") -> int:
    """This process's rank in the group, -1 if it is not a member."""
    group = _groups.get(group_name)
    return group.rank if group is not None else -1


def get_collective_group_size(group_name: str = "default") -> int:
    """The group's world size, -1 if this process is not a member."""
    group = _groups.get(group_name)
    return group.world if group is not None else -1


def get_backend(group_name: str = "default") -> str | None:
    """The backend a group runs on here ("shm", "ring", "gloo", "nccl")."""
    group = _groups.get(group_name)
    return group.backend if group is not None else None


def _check_group_args(world_size, rank, backend, group_name) -> None:
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in 0..{world_size - 1}, got {rank!r}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown collective backend {backend!r}: use one of "
                         f"{', '.join(BACKENDS)}")
    if not isinstance(group_name, str) or not group_name:
        raise ValueError(f"group_name must be a non-empty string, got {group_name!r}")


def _has_cuda() -> bool:
    """A GPU is assigned to this process and torch can use it (torch is
    only imported when shoal gave this process a GPU)."""
    if not shoal.get_gpu_ids():
        return False
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        return False
    return torch.cuda.is_available() and dist.is_nccl_available()


def _node_host(node_id: str) -> str:
    for row in shoal.nodes():
        if row.get("NodeID") == node_id:
            return row.get("NodeManagerAddress") or "127.0.0.1"
    return "127.0.0.1"


def _group(group_name: str):
    group = _groups.get(group_name)
    if group is not None:
        return group
    declared = None
    actor_id = shoal.get_runtime_context().get_actor_id()
    if actor_id is not None:
        declared = rendezvous.declared_rank(group_name, actor_id)
    if declared is None:
        raise CollectiveError(
            f"collective group {group_name!r} is not initialised in this process: call "
            f"init_collective_group(world_size, rank, group_name={group_name!r}) here, or "
            f"create_collective_group(actors, ..., group_name={group_name!r}) from the driver")
    rank, world, backend, timeout_s = declared
    init_collective_group(world, rank, backend, group_name, timeout_s)
    return _groups[group_name]


# ---------------------------------------------------------------- tensors per backend
class _Torch:
    """A tensor as torch sees it for a torch backend (numpy wrapped, CPU
    tensors moved to the GPU for NCCL and back)."""

    def __init__(self, t, device, what: str = "tensor"):
        import torch
        check_tensor(t, what)
        self.orig = t
        self.flat = None
        if isinstance(t, np.ndarray):
            self.flat = Flat(t, what)
            x = torch.from_numpy(self.flat.array)
        else:
            x = t
        self.back = x.device != device or not x.is_contiguous()
        self.t = x.to(device).contiguous() if self.back else x

    def commit(self):
        if self.back:
            target = self.orig if self.flat is None else None
            if target is not None:
                target.copy_(self.t.reshape(target.shape))
            else:
                import torch
                src = self.t.to("cpu").reshape(-1)
                self.flat.array[...] = src.numpy()
        return self.flat.commit() if self.flat is not None else self.orig


def _wrap(group, t, what: str = "tensor"):
    if group.backend in ("gloo", "nccl"):
        return _Torch(t, group.device, what)
    return Flat(t, what)


def _data(w):
    return w.t if isinstance(w, _Torch) else w.array


def _same_shape(x, ref, what: str) -> None:
    if tuple(x.shape) != tuple(ref.shape) or _dtype(x) != _dtype(ref):
        raise ValueError(f"{what} has shape {tuple(x.shape)} and dtype {_dtype(x)}; expected "
                         f"shape {tuple(ref.shape)} and dtype {_dtype(ref)}")


def _dtype(t) -> str:
    return str(t.dtype).replace("torch.", "")


def _check_rank(group, r: int, what: str) -> None:
    if not isinstance(r, int) or not 0 <= r < group.world:
        raise ValueError(f"{what} must be a rank in 0..{group.world - 1}, got {r!r}")


def _check_list(group, xs, what: str) -> list:
    if xs is None or not isinstance(xs, (list, tuple)) or len(xs) != group.world:
        raise ValueError(f"{what} must be a list of {group.world} tensors (one per rank), got "
                         f"{type(xs).__name__}{'' if not isinstance(xs, (list, tuple)) else f' of {len(xs)}'}")
    for x in xs:
        check_tensor(x, what + " item")
    return list(xs)


# ---------------------------------------------------------------- operations
def allreduce(tensor, group_name: str = "default", op=ReduceOp.SUM):
    """Reduce ``tensor`` over all members, in place where it is writable;
    returns the tensor holding the result (the same object when in place)."""
    group, op = _group(group_name), reduce_op(op)
    w = _wrap(group, tensor)
    group.allreduce(_data(w), op)
    return w.commit()


def reduce(tensor, dst_rank: int = 0, group_name: str = "default", op=ReduceOp.SUM):
    """Reduce onto ``dst_rank`` (only its tensor changes)."""
    group, op = _group(group_name), reduce_op(op)
    _check_rank(group, dst_rank, "dst_rank")
    w = _wrap(group, tensor)
    group.reduce(_data(w), dst_rank, op)
    return w.commit()


def broadcast(tensor, src_rank: int = 0, group_name: str = "default"):
    """Copy ``src_rank``'s tensor into every member's."""
    group = _group(group_name)
    _check_rank(group, src_rank, "src_rank")
    w = _wrap(group, tensor)
    group.broadcast(_data(w), src_rank)
    return w.commit()


def allgather(tensor_list, tensor, group_name: str = "default") -> list:
    """Fill ``tensor_list[r]`` with rank r's ``tensor`` (pass None to get new
    ones); returns the list."""
    group = _group(group_name)
    check_tensor(tensor)
    if tensor_list is None:
        tensor_list = [_empty_like(tensor) for _ in range(group.world)]
    tensor_list = _check_list(group, tensor_list, "tensor_list")
    for x in tensor_list:
        _same_shape(x, tensor, "an allgather output")
    w = _wrap(group, tensor)
    outs = [_wrap(group, x, "tensor_list item") for x in tensor_list]
    group.allgather([_data(o) for o in outs], _data(w))
    return [o.commit() for o in outs]


def reducescatter(tensor, tensor_list, group_name: str = "default", op=ReduceOp.SUM):
    """``tensor`` on rank r becomes the reduction over all ranks of their
    ``tensor_list[r]``; returns it."""
    group, op = _group(group_name), reduce_op(op)
    tensor_list = _check_list(group, tensor_list, "tensor_list")
    for x in tensor_list:
        _same_shape(x, tensor, "a reducescatter input")
    w = _wrap(group, tensor)
    ins = [_wrap(group, x, "tensor_list item") for x in tensor_list]
    group.reducescatter(_data(w), [_data(i) for i in ins], op)
    return w.commit()


def alltoall(output_list, input_list, group_name: str = "default"):
    """Rank r's ``input_list[j]`` lands in rank j's ``output_list[r]``. Given
    one tensor each instead of lists, axis 0 is split into world_size equal
    parts. Every part has the same shape on every rank. Returns the output."""
    group = _group(group_name)
    single = not isinstance(input_list, (list, tuple))
    if single:
        check_tensor(input_list, "input")
        if output_list is None:
            output_list = _empty_like(input_list)
        check_tensor(output_list, "output")
        _same_shape(output_list, input_list, "the alltoall output")
        if input_list.shape[0] % group.world:
            raise ValueError(f"alltoall: axis 0 of the input ({input_list.shape[0]}) does not "
                             f"split into {group.world} equal parts")
        ins = [_wrap(group, input_list, "input")]
        outs = [_wrap(group, output_list, "output")]
        in_parts = _split(_data(ins[0]), group.world)
        out_parts = _split(_data(outs[0]), group.world)
    else:
        input_list = _check_list(group, input_list, "input_list")
        if output_list is None:
            output_list = [_empty_like(input_list[0]) for _ in range(group.world)]
        output_list = _check_list(group, output_list, "output_list")
        for x in list(input_list) + list(output_list):
            _same_shape(x, input_list[0], "an alltoall part")
        ins = [_wrap(group, x, "input_list item") for x in input_list]
        outs = [_wrap(group, x, "output_list item") for x in output_list]
        in_parts, out_parts = [_data(x) for x in ins], [_data(x) for x in outs]
    group.alltoall(out_parts, in_parts)
    results = [o.commit() for o in outs]
    return results[0] if single else results


def barrier(group_name: str = "default") -> None:
    """Return once every member has called barrier."""
    _group(group_name).barrier()


def send(tensor, dst_rank: int, group_name: str = "default") -> None:
    """Send ``tensor`` to ``dst_rank`` (which calls recv with a tensor of the
    same size)."""
    group = _group(group_name)
    _check_rank(group, dst_rank, "dst_rank")
    if dst_rank == group.rank:
        raise ValueError("send: dst_rank is this member's own rank")
    group.send(_data(_wrap(group, tensor)), dst_rank)


def recv(tensor, src_rank: int, group_name: str = "default"):
    """Receive into ``tensor`` what ``src_rank`` sent; returns the tensor."""
    group = _group(group_name)
    _check_rank(group, src_rank, "src_rank")
    if src_rank == group.rank:
        raise ValueError("recv: src_rank is this member's own rank")
    w = _wrap(group, tensor)
    group.recv(_data(w), src_rank)
    return w.commit()


def _empty_like(t):
    if is_torch(t):
        import torch
        return torch.empty_like(t)
    return np.empty_like(t)


def _split(flat, parts: int) -> list:
    n = flat.shape[0] // parts
    return [flat[i * n:(i + 1) * n] for i in range(parts)]
