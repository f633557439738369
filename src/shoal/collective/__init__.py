"""Collective communication among actors and tasks (``ray.util.collective``'s
API): groups with ranks, and allreduce, reduce, broadcast, allgather,
reducescatter, alltoall, barrier, send and recv on numpy arrays and torch
tensors. See docs/collective.md.

    import shoal.collective as col
    col.init_collective_group(world_size=2, rank=rank, group_name="g")
    col.allreduce(grads, group_name="g")          # in place, summed
"""
from .api import (BACKENDS, allgather, allreduce, alltoall, barrier, broadcast,
                  create_collective_group, destroy_collective_group, get_backend,
                  get_collective_group_size, get_rank, init_collective_group,
                  is_group_initialized, recv, reduce, reducescatter, send)
from .tensors import ReduceOp
from ..exceptions import CollectiveError

get_world_size = get_collective_group_size

__all__ = [
    "init_collective_group", "create_collective_group", "destroy_collective_group",
    "is_group_initialized", "get_rank", "get_collective_group_size", "get_world_size",
    "get_backend", "allreduce", "reduce", "broadcast", "allgather", "reducescatter",
    "alltoall", "barrier", "send", "recv", "ReduceOp", "CollectiveError", "BACKENDS",
]
