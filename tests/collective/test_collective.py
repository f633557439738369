"""shoal.collective in working order: what every operation computes on the
"shm", "ring" and "gloo" backends with 2 and 3 members, on numpy arrays and
torch tensors (in place where it can be), how groups form (explicitly, or
declared by the driver and joined on first use), and which backend "auto"
picks on one node and across two.

One cluster and three member actors (``num_cpus=0``, so they fit the 2-CPU
cluster) serve the whole module: starting workers and importing torch in
them is most of the cost. A group is formed once per (backend, world size)
and shared by the tests that use it; every operation test leaves it as it
found it. A member runs the test's function with its rank and the group's
name: ``fn(rank, group_name, *args)``; results come back by rank and are
checked on the driver against numpy.

Functions and classes here ship by value (node agents' workers in the
multi-node test cannot import this module).
"""
from __future__ import annotations

import itertools
import os
import sys

import cloudpickle
import numpy as np
import pytest

import shoal
import shoal.collective as col
from shoal.collective import ReduceOp

from .. import conftest
from ..conftest import wait_for, worker_children

cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(conftest)

GET_TIMEOUT = 60
JOIN_TIMEOUT_S = 60
SMALL, LARGE = 7, 10_001      # float64: 56 B and 80 KB, either side of shm's 64 KiB switch;
#                               neither splits evenly into 2 or 3 parts
GROUPS = [("shm", 2), ("shm", 3), ("ring", 2), ("ring", 3), ("gloo", 2), ("gloo", 3)]


# ------------------------------------------------------------------ members
@shoal.remote(num_cpus=0)
class Member:
    def pid(self) -> int:
        return os.getpid()

    def run(self, fn, *args):
        return fn(*args)


def data(seed: int, n: int, dtype="float64") -> np.ndarray:
    """Small positive integers (sums, products and means of a few are exact)."""
    return (np.arange(n) % 1000 + seed + 1).astype(dtype)


def join(rank, name, world, backend, timeout_s=JOIN_TIMEOUT_S):
    col.init_collective_group(world, rank, backend=backend, group_name=name,
                              timeout_s=timeout_s)
    return col.get_backend(name), col.get_rank(name), col.get_collective_group_size(name)


def leave(rank, name):
    col.destroy_collective_group(name)
    return col.is_group_initialized(name), col.get_rank(name), col.get_backend(name)


def membership(rank, name):
    return (col.is_group_initialized(name), col.get_rank(name),
            col.get_collective_group_size(name), col.get_backend(name))


def rendezvous_gone(name: str) -> bool:
    try:
        shoal.get_actor("shoal.collective:" + name)
    except ValueError:
        return True
    return False


def wait_rendezvous_gone(name: str) -> None:
    """Once every member joined, the group's rendezvous actor exits by itself."""
    wait_for(lambda: rendezvous_gone(name), timeout=15,
             what=f"the rendezvous actor of {name!r} to exit")


class Group:
    """A collective group of some of the module's members."""

    def __init__(self, members, backend: str, name: str, timeout_s: float = JOIN_TIMEOUT_S):
        self.members, self.backend, self.name = list(members), backend, name
        self.world, self.timeout_s = len(self.members), timeout_s

    def run(self, fn, *args) -> list:
        """``fn(rank, name, *args)`` on every member at once; the results by rank."""
        return shoal.get([m.run.remote(fn, r, self.name, *args)
                          for r, m in enumerate(self.members)], timeout=GET_TIMEOUT)

    def start_joins(self, ranks=None) -> list:
        """Start init_collective_group on the members of ``ranks`` (default
        all); their refs. The lowest rank goes first and the others once its
        rendezvous actor is up. Not for correctness: members that create the
        rendezvous at the same instant meet at one actor too (that path has
        a test of its own, test_collective_failures.py::
        test_members_joining_at_once_meet_at_one_rendezvous); this keeps the
        other tests off it, so that each failure points at one thing."""
        first, *rest = range(self.world) if ranks is None else ranks
        refs = [self._join(first)]
        wait_for(lambda: not rendezvous_gone(self.name), timeout=15,
                 what=f"rank {first} to create the rendezvous actor")
        return refs + [self._join(r) for r in rest]

    def _join(self, rank: int):
        return self.members[rank].run.remote(join, rank, self.name, self.world, self.backend,
                                             self.timeout_s)

    def form(self) -> list:
        """Every member joins; what ``join`` returned, by rank."""
        joined = shoal.get(self.start_joins(), timeout=GET_TIMEOUT)
        wait_rendezvous_gone(self.name)
        return joined

    def destroy(self) -> None:
        # a round of its own: every member has finished the last operation
        assert self.run(leave) == [(False, -1, None)] * self.world


# ------------------------------------------------------------------ fixtures
@pytest.fixture(autouse=True)
def _no_leftover_cluster():
    """This module keeps one cluster for all its tests (``cluster`` checks
    at the end that it left no worker), overriding the per-test check."""
    yield


@pytest.fixture(scope="module")
def cluster():
    shoal.init(num_cpus=2, object_store_memory=256 * 1024 * 1024)
    try:
        yield
    finally:
        shoal.shutdown()
        wait_for(lambda: not worker_children(), timeout=10, what="worker processes to exit")


@pytest.fixture(scope="module")
def members(cluster):
    actors = [Member.remote() for _ in range(3)]
    shoal.get([a.pid.remote() for a in actors], timeout=GET_TIMEOUT)
    return actors


_names = itertools.count()


@pytest.fixture
def group_name():
    """A name no other test used."""
    return f"g{next(_names)}"


@pytest.fixture(scope="module", params=GROUPS, ids=[f"{b}-{w}" for b, w in GROUPS])
def group(request, members):
    backend, world = request.param
    if backend == "gloo":
        pytest.importorskip("torch", reason="the gloo backend is torch.distributed's")
    g = Group(members[:world], backend, f"{backend}-{world}")
    assert g.form() == [(backend, r, world) for r in range(world)]
    yield g
    g.destroy()


def expected(op: ReduceOp, inputs: list) -> np.ndarray:
    stacked = np.stack(inputs)
    return {ReduceOp.SUM: stacked.sum(0), ReduceOp.PRODUCT: stacked.prod(0),
            ReduceOp.MIN: stacked.min(0), ReduceOp.MAX: stacked.max(0),
            ReduceOp.MEAN: stacked.sum(0) / len(inputs)}[op]


# ------------------------------------------------------------------ operations
def allreduce_every_op(rank, name):
    return {(op, n): col.allreduce(data(rank, n), group_name=name, op=op)
            for op in ReduceOp for n in (SMALL, LARGE)}


def test_allreduce_computes_every_op_on_small_and_large_arrays(group):
    for rank, results in enumerate(group.run(allreduce_every_op)):
        assert len(results) == 2 * len(ReduceOp)
        for (op, n), got in results.items():
            want = expected(op, [data(r, n) for r in range(group.world)])
            np.testing.assert_array_equal(got, want, err_msg=f"rank {rank}, {op}, n={n}")


def reduce_onto(rank, name, n, dst):
    results = []
    for op in ReduceOp:
        a = data(rank, n)
        result = col.reduce(a, dst_rank=dst, group_name=name, op=op)
        results.append((op, result is a, result))
    return results


@pytest.mark.parametrize("n", [SMALL, LARGE])
def test_reduce_changes_only_the_destinations_tensor(group, n):
    for dst in (group.world - 1, 0):
        for rank, results in enumerate(group.run(reduce_onto, n, dst)):
            assert len(results) == len(ReduceOp)
            for op, same, got in results:
                assert same
                want = expected(op, [data(r, n) for r in range(group.world)]) \
                    if rank == dst else data(rank, n)
                np.testing.assert_array_equal(got, want, err_msg=f"rank {rank}, {op}, dst {dst}")


def broadcast_from_1(rank, name, n):
    a = data(rank, n)
    return col.broadcast(a, src_rank=1, group_name=name)


@pytest.mark.parametrize("n", [SMALL, LARGE])
def test_broadcast_copies_a_nonzero_roots_tensor_to_every_member(group, n):
    for got in group.run(broadcast_from_1, n):
        np.testing.assert_array_equal(got, data(1, n))


def allgather_both_ways(rank, name):
    world = col.get_collective_group_size(name)
    new = col.allgather(None, data(rank, SMALL).reshape(1, SMALL), group_name=name)
    given = [np.zeros((1, SMALL)) for _ in range(world)]
    filled = col.allgather(given, data(rank, SMALL).reshape(1, SMALL), group_name=name)
    return new, filled, all(a is b for a, b in zip(filled, given))


def test_allgather_fills_a_new_or_the_given_list_in_rank_order(group):
    want = [data(r, SMALL).reshape(1, SMALL) for r in range(group.world)]
    for new, filled, in_given in group.run(allgather_both_ways):
        assert in_given
        for got in (new, filled):
            assert len(got) == group.world
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)


def reducescatter_parts(rank, name, op):
    world = col.get_collective_group_size(name)
    out = np.zeros(SMALL)
    result = col.reducescatter(out, [data(10 * rank + j, SMALL) for j in range(world)],
                               group_name=name, op=op)
    return result is out, result


@pytest.mark.parametrize("op", [ReduceOp.SUM, ReduceOp.MAX, ReduceOp.MEAN])
def test_reducescatter_leaves_rank_r_the_reduction_of_everyones_part_r(group, op):
    for rank, (same, got) in enumerate(group.run(reducescatter_parts, op)):
        assert same
        want = expected(op, [data(10 * r + rank, SMALL) for r in range(group.world)])
        np.testing.assert_array_equal(got, want, err_msg=f"rank {rank}")


def alltoall_both_forms(rank, name):
    world = col.get_collective_group_size(name)
    outs = [np.zeros(3) for _ in range(world)]
    listed = col.alltoall(outs, [np.full(3, 10.0 * rank + j) for j in range(world)],
                          group_name=name)
    single_in = np.arange(world * 2 * 3, dtype=np.float64).reshape(world * 2, 3) + 100 * rank
    single = col.alltoall(None, single_in, group_name=name)
    return listed, all(a is b for a, b in zip(listed, outs)), single


def test_alltoall_sends_part_j_to_rank_j_in_list_and_single_array_form(group):
    w = group.world
    for rank, (listed, in_given, single) in enumerate(group.run(alltoall_both_forms)):
        assert in_given
        for j, got in enumerate(listed):
            np.testing.assert_array_equal(got, np.full(3, 10.0 * j + rank))
        # rank j's input rows 2*rank, 2*rank+1 land in rows 2j, 2j+1 here
        want = np.concatenate([
            (np.arange(w * 6, dtype=np.float64).reshape(w * 2, 3) + 100 * j)[2 * rank:2 * rank + 2]
            for j in range(w)])
        np.testing.assert_array_equal(single, want)


def barrier_then_rank(rank, name):
    col.barrier(group_name=name)
    return rank


def test_barrier_returns_once_every_member_called_it(group):
    *early, last = group.members
    refs = [m.run.remote(barrier_then_rank, r, group.name) for r, m in enumerate(early)]
    done, _ = shoal.wait(refs, num_returns=1, timeout=0.3)
    assert done == []                     # nobody passes while the last member is away
    refs.append(last.run.remote(barrier_then_rank, group.world - 1, group.name))
    assert shoal.get(refs, timeout=GET_TIMEOUT) == list(range(group.world))


def exchange(rank, name):
    """Ranks 0 and world-1: two messages in a row 0 -> last, then one back."""
    last = col.get_collective_group_size(name) - 1
    if rank == 0:
        col.send(np.arange(5.0), last, group_name=name)
        col.send(np.arange(5.0) * 2, last, group_name=name)
        return col.recv(np.zeros(4), last, group_name=name)
    if rank == last:
        first = col.recv(np.zeros(5), 0, group_name=name)
        second = col.recv(np.zeros(5), 0, group_name=name)
        col.send(np.full(4, 7.0), 0, group_name=name)
        return first, second
    return None


def test_send_and_recv_deliver_messages_in_order(group):
    results = group.run(exchange)
    first, second = results[-1]
    np.testing.assert_array_equal(first, np.arange(5.0))
    np.testing.assert_array_equal(second, np.arange(5.0) * 2)
    np.testing.assert_array_equal(results[0], np.full(4, 7.0))
    assert all(r is None for r in results[1:-1])


# ------------------------------------------------------------------ tensors
def allreduce_numpy_kinds(rank, name):
    out = {}
    for dtype in ("float64", "float32", "int64"):
        a = data(rank, SMALL, dtype)
        result = col.allreduce(a, group_name=name)
        out[dtype] = (result is a, result.dtype.name, result)
    ro = data(rank, SMALL)
    ro.setflags(write=False)
    result = col.allreduce(ro, group_name=name)
    out["read-only"] = (result is ro, ro.copy(), result)
    base = data(rank, 2 * SMALL)
    result = col.allreduce(base[::2], group_name=name)
    out["strided"] = (result.base is base, base)
    return out


def test_allreduce_works_in_place_on_numpy_arrays_of_any_kind(group):
    world = group.world
    for rank, out in enumerate(group.run(allreduce_numpy_kinds)):
        for dtype in ("float64", "float32", "int64"):
            same, got_dtype, got = out[dtype]
            assert same and got_dtype == dtype
            np.testing.assert_array_equal(
                got, expected(ReduceOp.SUM, [data(r, SMALL, dtype) for r in range(world)]))
        same, ro_after, result = out["read-only"]
        assert not same
        np.testing.assert_array_equal(ro_after, data(rank, SMALL))     # left unchanged
        np.testing.assert_array_equal(
            result, expected(ReduceOp.SUM, [data(r, SMALL) for r in range(world)]))
        # a non-contiguous view: the result is written back through it
        is_view, base = out["strided"]
        assert is_view
        bases = [data(r, 2 * SMALL) for r in range(world)]
        np.testing.assert_array_equal(base[::2], expected(ReduceOp.SUM, [b[::2] for b in bases]))
        np.testing.assert_array_equal(base[1::2], data(rank, 2 * SMALL)[1::2])


def allreduce_torch_kinds(rank, name):
    import torch
    out = {}
    for dtype in (torch.float64, torch.float32, torch.int64, torch.bfloat16):
        t = torch.from_numpy(data(rank, SMALL)).to(dtype)
        result = col.allreduce(t, group_name=name)
        out[str(dtype)] = (result is t, str(result.dtype), result.to(torch.float64).numpy())
    t = torch.from_numpy(data(rank, 2 * SMALL))
    col.allreduce(t[::2], group_name=name)
    out["strided"] = (t.numpy(),)
    return out


def test_allreduce_works_in_place_on_torch_tensors_bfloat16_and_strided_included(group):
    torch = pytest.importorskip("torch")
    world = group.world
    for rank, out in enumerate(group.run(allreduce_torch_kinds)):
        for dtype in (torch.float64, torch.float32, torch.int64, torch.bfloat16):
            same, got_dtype, got = out[str(dtype)]
            assert same and got_dtype == str(dtype)
            want = expected(ReduceOp.SUM, [data(r, SMALL) for r in range(world)])
            np.testing.assert_array_equal(got, want, err_msg=f"rank {rank}, {dtype}")
        (base,) = out["strided"]
        bases = [data(r, 2 * SMALL) for r in range(world)]
        np.testing.assert_array_equal(base[::2], expected(ReduceOp.SUM, [b[::2] for b in bases]))
        np.testing.assert_array_equal(base[1::2], data(rank, 2 * SMALL)[1::2])


# ------------------------------------------------------------------ groups
def allreduce_sum(rank, name):
    return col.allreduce(data(rank, SMALL), group_name=name)


def test_auto_picks_shared_memory_for_members_on_one_node(members, group_name):
    g = Group(members[:2], "auto", group_name)
    assert g.form() == [("shm", 0, 2), ("shm", 1, 2)]
    try:
        want = expected(ReduceOp.SUM, [data(r, SMALL) for r in range(2)])
        for got in g.run(allreduce_sum):
            np.testing.assert_array_equal(got, want)
    finally:
        g.destroy()


def allreduce_unjoined(index, name):
    """No init: the first call joins the group the driver declared."""
    before = membership(index, name)
    result = col.allreduce(data(index, SMALL), group_name=name)
    return before, membership(index, name), result


def test_declared_members_join_on_their_first_call(members, group_name):
    col.create_collective_group(members, ranks=[2, 0, 1], backend="auto",
                                group_name=group_name)
    results = shoal.get([m.run.remote(allreduce_unjoined, i, group_name)
                         for i, m in enumerate(members)], timeout=GET_TIMEOUT)
    want = expected(ReduceOp.SUM, [data(i, SMALL) for i in range(3)])
    for (before, after, got), rank in zip(results, [2, 0, 1]):
        assert before == (False, -1, -1, None)
        assert after == (True, rank, 3, "shm")
        np.testing.assert_array_equal(got, want)
    wait_rendezvous_gone(group_name)
    assert shoal.get([m.run.remote(leave, 0, group_name) for m in members],
                     timeout=GET_TIMEOUT) == [(False, -1, None)] * 3


def test_a_group_declared_again_while_the_last_rendezvous_exits(members, group_name,
                                                                 monkeypatch):
    """The name still gives the old rendezvous actor, which has exited (its
    group formed and every member left): declaring the group anew gets a
    new actor instead of failing with ActorDiedError."""
    from shoal.collective import rendezvous
    col.create_collective_group(members[:2], group_name=group_name)
    old = rendezvous.existing_rendezvous(group_name)
    shoal.get([m.run.remote(allreduce_unjoined, i, group_name)
               for i, m in enumerate(members[:2])], timeout=GET_TIMEOUT)
    wait_rendezvous_gone(group_name)
    shoal.get([m.run.remote(leave, 0, group_name) for m in members[:2]], timeout=GET_TIMEOUT)
    made = rendezvous.rendezvous_actor
    handles = iter([old])
    monkeypatch.setattr(rendezvous, "rendezvous_actor",
                        lambda name: next(handles, None) or made(name))
    col.create_collective_group(members[1:], group_name=group_name)
    results = shoal.get([m.run.remote(allreduce_unjoined, i, group_name)
                         for i, m in enumerate(members[1:])], timeout=GET_TIMEOUT)
    want = expected(ReduceOp.SUM, [data(i, SMALL) for i in range(2)])
    for _, after, got in results:
        assert after[:3] == (True, after[1], 2)
        np.testing.assert_array_equal(got, want)
    assert next(handles, None) is None                # the stale handle was tried first
    wait_rendezvous_gone(group_name)
    assert shoal.get([m.run.remote(leave, 0, group_name) for m in members[1:]],
                     timeout=GET_TIMEOUT) == [(False, -1, None)] * 2


def test_rank_and_size_are_minus_one_outside_a_group(members, group_name):
    g = Group(members[:2], "shm", group_name)
    g.form()
    try:
        assert membership(None, g.name) == (False, -1, -1, None)          # the driver
        assert col.get_world_size(g.name) == -1
        assert shoal.get(members[2].run.remote(membership, 2, g.name),
                         timeout=GET_TIMEOUT) == (False, -1, -1, None)
        assert g.run(membership) == [(True, 0, 2, "shm"), (True, 1, 2, "shm")]
    finally:
        g.destroy()


def test_destroying_a_declared_group_from_the_driver_forgets_it(members, group_name):
    col.create_collective_group(members[:2], group_name=group_name)
    assert not rendezvous_gone(group_name)
    col.destroy_collective_group(group_name)
    wait_rendezvous_gone(group_name)
    for ref in [m.run.remote(allreduce_sum, r, group_name) for r, m in enumerate(members[:2])]:
        with pytest.raises(col.CollectiveError, match="is not initialised in this process"):
            shoal.get(ref, timeout=GET_TIMEOUT)


@shoal.remote(num_cpus=1)
def task_member(rank, name, backend):
    """A task, not an actor: joins, allreduces, leaves."""
    col.init_collective_group(2, rank, backend=backend, group_name=name,
                              timeout_s=JOIN_TIMEOUT_S)
    try:
        return col.get_backend(name), col.allreduce(data(rank, LARGE), group_name=name)
    finally:
        col.destroy_collective_group(name)


@pytest.mark.parametrize("backend, chosen", [("auto", "shm"), ("ring", "ring")])
def test_tasks_in_a_placement_group_form_a_group_of_their_own(cluster, group_name, backend,
                                                              chosen):
    from shoal.util.placement_group import placement_group, remove_placement_group
    from shoal.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    pg = placement_group([{"CPU": 1}] * 2)
    assert pg.wait(30)
    try:
        refs = [task_member.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            pg, placement_group_bundle_index=r)).remote(r, group_name, backend)
            for r in range(2)]
        want = expected(ReduceOp.SUM, [data(r, LARGE) for r in range(2)])
        for got_backend, got in shoal.get(refs, timeout=GET_TIMEOUT):
            assert got_backend == chosen
            np.testing.assert_array_equal(got, want)
    finally:
        remove_placement_group(pg)


def moe_example():
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "moe_alltoall.py")
    spec = importlib.util.spec_from_file_location("moe_alltoall", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_moe_example_is_right_when_tokens_do_not_split_evenly(cluster):
    """97 tokens on 3 experts: shards of 33, 32 and 32 (each actor's padded
    blocks must still have one shape)."""
    assert moe_example().main(["--experts", "3", "--tokens", "97"]) < 1e-4


def join_with_a_gpu_claimed(rank, name, world):
    """Join with backend "auto", rank 0 claiming a GPU (so it opens a
    TCPStore for NCCL) and the others not (so auto picks shm); returns
    whether rank 0's store port still accepts connections afterwards."""
    import socket
    from shoal.collective import api, torch_group
    opened = []
    open_store, has_cuda = torch_group.open_store, api._has_cuda

    def recording(host, *args):
        store = open_store(host, *args)
        opened.append((host, store.port))
        return store

    torch_group.open_store, api._has_cuda = recording, (lambda: rank == 0)
    try:
        error = None
        try:
            col.init_collective_group(world, rank, backend="auto", group_name=name,
                                      timeout_s=2 if world > 2 else JOIN_TIMEOUT_S)
        except col.CollectiveError as e:
            error = e               # its traceback keeps init_collective_group's frame
        if not opened:
            return None
        try:
            socket.create_connection(opened[0], timeout=5).close()
            still_open = True
        except ConnectionRefusedError:
            still_open = False
        return col.get_backend(name), error is not None, still_open
    finally:
        torch_group.open_store, api._has_cuda = open_store, has_cuda
        if col.is_group_initialized(name):
            col.destroy_collective_group(name)


def test_rank_0s_torch_store_is_closed_when_auto_picks_another_backend(members, group_name):
    pytest.importorskip("torch")
    g = Group(members[:2], "auto", group_name)
    assert g.run(join_with_a_gpu_claimed, 2) == [("shm", False, False), None]
    wait_rendezvous_gone(group_name)


def test_rank_0s_torch_store_is_closed_when_the_group_does_not_form(members, group_name):
    """World 3, only rank 0 joins: the join times out (2 s)."""
    pytest.importorskip("torch")
    g = Group(members[:1], "auto", group_name)
    assert g.run(join_with_a_gpu_claimed, 3) == [(None, True, False)]
    wait_rendezvous_gone(group_name)
