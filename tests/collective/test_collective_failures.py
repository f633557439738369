"""shoal.collective when things go wrong: a member killed mid-allreduce
(every other operation, and deaths while a group forms:
test_collective_deaths.py), members calling different operations, a member
that never joins, bad arguments, and races between members (each xfail
here is a known bug).

Every test has a cluster and members of its own (``shoal_cluster`` checks
that no worker outlives it): a failure leaves a group unusable. Waits are
bounded by the groups' ``timeout_s`` and the tests' timeouts, never by
sleeping. Two tests force a race's losing order by wrapping an internal
function inside one member (a hold until the driver or the other member
has done its part); the rest use the public API only.
"""
from __future__ import annotations

import os
import signal
import sys

import cloudpickle
import numpy as np
import pytest

import shoal
import shoal.collective as col
from shoal.collective import CollectiveError, ReduceOp

from ..conftest import touch, wait_for, wait_for_file
from .test_collective import (GET_TIMEOUT, SMALL, Group, Member, data, join, membership,
                              wait_rendezvous_gone)

cloudpickle.register_pickle_by_value(sys.modules[__name__])   # as test_collective.py does

BACKENDS = ["shm", "ring", "gloo"]


def bug(reason: str, raises=None):
    """A known bug in shoal: the test fails until it is fixed (then xpasses,
    which fails the run: remove the mark)."""
    return pytest.mark.xfail(strict=True, raises=raises, reason="BUG: " + reason)


def needs(backend: str) -> None:
    if backend == "gloo":
        pytest.importorskip("torch", reason="the gloo backend is torch.distributed's")


def new_group(backend: str, world: int, name: str = "g", timeout_s: float = 30) -> Group:
    needs(backend)
    g = Group([Member.remote() for _ in range(world)], backend, name, timeout_s)
    g.form()
    return g


def raises(ref, match: str) -> str:
    with pytest.raises(CollectiveError, match=match) as info:
        shoal.get(ref, timeout=GET_TIMEOUT)
    return str(info.value)


# ------------------------------------------------------------------ a member dies
def allreduce_after_mark(rank, name, marks):
    touch(os.path.join(marks, str(rank)))
    return col.allreduce(data(rank, SMALL), group_name=name)


def kill_rank_2_in_allreduce(g: Group, marks) -> list:
    """Ranks 0 and 1 wait in allreduce while rank 2 is SIGKILLed; their errors."""
    dead = shoal.get(g.members[2].pid.remote(), timeout=GET_TIMEOUT)
    refs = [m.run.remote(allreduce_after_mark, r, g.name, str(marks))
            for r, m in enumerate(g.members[:2])]
    wait_for(lambda: sorted(os.listdir(marks)) == ["0", "1"], timeout=30,
             what="ranks 0 and 1 to start their allreduce")
    os.kill(dead, signal.SIGKILL)
    return [raises(ref, "collective group 'g'") for ref in refs]


# timeout_s far beyond the test's own: a death must be seen as one, not waited out
@pytest.mark.parametrize("backend", ["shm", "ring"])
def test_a_killed_member_fails_the_others_waiting_allreduce(shoal_cluster, backend, tmp_path):
    messages = kill_rank_2_in_allreduce(new_group(backend, 3, timeout_s=300), tmp_path)
    # the first to notice names the dead rank; the other may only learn that
    # the first gave up ("rank 0 gave up", "lost the connection to rank 0")
    assert any("rank 2" in m and ("died" in m or "lost the connection" in m) for m in messages)
    assert not any("timed out" in m for m in messages), messages


def test_a_killed_member_is_named_by_the_gloo_backend(shoal_cluster, tmp_path):
    messages = kill_rank_2_in_allreduce(new_group("gloo", 3, timeout_s=300), tmp_path)
    assert any("rank 2" in m and "died" in m for m in messages)
    assert not any("timed out" in m for m in messages), messages


def allreduce_after_leave(rank, name):
    if rank == 0:
        col.destroy_collective_group(name)
        return None
    return col.allreduce(data(rank, SMALL), group_name=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_member_that_leaves_fails_the_others_next_operation(shoal_cluster, backend):
    g = new_group(backend, 2, timeout_s=5)
    ok, failed = [m.run.remote(allreduce_after_leave, r, g.name)
                  for r, m in enumerate(g.members)]
    assert shoal.get(ok, timeout=GET_TIMEOUT) is None
    raises(failed, "collective group 'g'")


# ------------------------------------------------------------------ mismatched calls
def mismatched(rank, name, case):
    a = data(rank, SMALL)
    if case == "operation":
        return col.allreduce(a, group_name=name) if rank == 0 else \
            col.broadcast(a, src_rank=0, group_name=name)
    if case == "size":
        return col.allreduce(data(rank, SMALL + rank), group_name=name)
    return col.allreduce(a.astype(np.int64) if rank else a, group_name=name)      # dtype


@pytest.mark.parametrize("case, rank_1_called", [
    ("operation", "rank 1: broadcast("), ("size", "rank 1: allreduce(SUM, "),
    ("dtype", "rank 1: allreduce(SUM, ")])
def test_members_calling_different_operations_all_fail_on_shm(shoal_cluster, case,
                                                              rank_1_called):
    g = new_group("shm", 2)
    refs = [m.run.remote(mismatched, r, g.name, case) for r, m in enumerate(g.members)]
    for ref in refs:
        message = raises(ref, "members called different operations")
        assert "rank 0: allreduce(SUM, " in message and rank_1_called in message
        assert ("64 bytes" in message) == (case == "size")


def test_a_dtype_mismatch_on_shm_names_both_dtypes(shoal_cluster):
    g = new_group("shm", 2)
    refs = [m.run.remote(mismatched, r, g.name, "dtype") for r, m in enumerate(g.members)]
    for ref in refs:
        message = raises(ref, "members called different operations")
        assert "float64" in message and "int64" in message


@pytest.mark.parametrize("case", ["operation", "size", "dtype"])
def test_members_calling_different_operations_all_fail_on_the_ring(shoal_cluster, case):
    g = new_group("ring", 2)
    refs = [m.run.remote(mismatched, r, g.name, case) for r, m in enumerate(g.members)]
    messages = [raises(ref, "collective group 'g'") for ref in refs]
    # the member that reads the unexpected header says so; the other loses it
    assert any("members called different operations" in m for m in messages)


def recv_other_size(rank, name):
    if rank == 0:
        return col.send(np.arange(5.0), 1, group_name=name)
    return col.recv(np.zeros(10), 0, group_name=name)


@pytest.mark.parametrize("backend", [
    "shm", "ring", "gloo"])
def test_a_recv_of_another_size_than_was_sent_fails(shoal_cluster, backend):
    g = new_group(backend, 2, timeout_s=5)
    sent, received = [m.run.remote(recv_other_size, r, g.name)
                      for r, m in enumerate(g.members)]
    raises(received, "sent .*40 bytes.*expected .*80")
    assert shoal.get(sent, timeout=GET_TIMEOUT) is None


# ------------------------------------------------------------------ forming groups
def test_a_member_that_never_joins_is_named_when_forming_times_out(shoal_cluster):
    g = Group([Member.remote() for _ in range(3)], "shm", "g", timeout_s=2)
    for ref in g.start_joins(ranks=[0, 1]):
        raises(ref, r"rank\(s\) \[2\] did not join within 2 s \(joined: \[0, 1\]\)")
    wait_rendezvous_gone("g")
    assert [r[0] for r in g.run(membership)] == [False] * 3


def join_twice(rank, name):
    return join(rank, name, 2, "shm")


def test_joining_a_group_twice_in_one_process_fails(shoal_cluster):
    g = new_group("shm", 2)
    for ref in [m.run.remote(join_twice, r, g.name) for r, m in enumerate(g.members)]:
        raises(ref, "collective group 'g' is already initialised in this process")
    assert g.run(membership) == [(True, 0, 2, "shm"), (True, 1, 2, "shm")]


def allreduce_unknown_group(rank, name):
    return col.allreduce(np.ones(2), group_name="nowhere")


def test_an_operation_on_a_group_never_formed_says_how_to_form_it(shoal_cluster):
    how = (r"collective group 'nowhere' is not initialised in this process: call "
           r"init_collective_group\(world_size, rank, group_name='nowhere'\) here, or "
           r"create_collective_group\(actors, ..., group_name='nowhere'\) from the driver")
    raises(Member.remote().run.remote(allreduce_unknown_group, 0, None), how)
    with pytest.raises(CollectiveError, match=how):
        allreduce_unknown_group(0, None)                  # from the driver


@pytest.mark.parametrize("call, error, message", [
    (lambda: col.init_collective_group(0, 0), ValueError, "world_size must be a positive int"),
    (lambda: col.init_collective_group(2, 2), ValueError, r"rank must be an int in 0..1, got 2"),
    (lambda: col.init_collective_group(2, -1), ValueError, r"rank must be an int in 0..1"),
    (lambda: col.init_collective_group(2, 0, backend="mpi"), ValueError,
     "unknown collective backend 'mpi': use one of auto, shm, ring, gloo, nccl"),
    (lambda: col.init_collective_group(2, 0, group_name=""), ValueError, "group_name"),
    (lambda: col.init_collective_group(2, 0, timeout_s=0), ValueError,
     "timeout_s must be positive"),
    (lambda: col.create_collective_group(["not an actor"]), TypeError,
     "create_collective_group takes actor handles, got str"),
], ids=["world-0", "rank-too-big", "rank-negative", "backend", "name", "timeout", "not-actors"])
def test_bad_group_arguments_are_refused_before_anything_starts(call, error, message):
    with pytest.raises(error, match=message):
        call()
    assert not shoal.is_initialized()


def bad_calls(rank, name):
    """Each call is refused on this member before it talks to the others."""
    calls = {
        "allgather-list": lambda: col.allgather([np.zeros(2)] * 3, np.zeros(2),
                                                group_name=name),
        "python-list": lambda: col.allreduce([1.0, 2.0], group_name=name),
        "object-dtype": lambda: col.allreduce(np.array([None, 1]), group_name=name),
        "unknown-op": lambda: col.allreduce(np.zeros(2), group_name=name, op="median"),
        "send-to-self": lambda: col.send(np.zeros(2), rank, group_name=name),
        "recv-from-self": lambda: col.recv(np.zeros(2), rank, group_name=name),
        "dst-out-of-range": lambda: col.reduce(np.zeros(2), dst_rank=2, group_name=name),
        "uneven-alltoall": lambda: col.alltoall(None, np.zeros((3, 2)), group_name=name),
    }
    refused = {}
    for case, call in calls.items():
        try:
            call()
        except Exception as e:          # noqa: BLE001 - the test checks which
            refused[case] = (type(e).__name__, str(e))
    return refused, col.allreduce(data(rank, SMALL), group_name=name)


BAD_CALLS = {
    "allgather-list": ("ValueError", "tensor_list must be a list of 2 tensors (one per rank), "
                                     "got list of 3"),
    "python-list": ("TypeError", "tensor must be a numpy array or a torch tensor, not list"),
    "object-dtype": ("TypeError", "tensor has dtype object; collectives move numbers only"),
    "unknown-op": ("ValueError", "unknown reduce op 'median'"),
    "send-to-self": ("ValueError", "send: dst_rank is this member's own rank"),
    "recv-from-self": ("ValueError", "recv: src_rank is this member's own rank"),
    "dst-out-of-range": ("ValueError", "dst_rank must be a rank in 0..1, got 2"),
    "uneven-alltoall": ("ValueError", "alltoall: axis 0 of the input (3) does not split into 2"),
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments_are_refused_and_the_group_goes_on(shoal_cluster, backend):
    g = new_group(backend, 2, timeout_s=10)
    for refused, after in g.run(bad_calls):
        assert refused.keys() == BAD_CALLS.keys()
        for case, (kind, message) in BAD_CALLS.items():
            assert refused[case][0] == kind and message in refused[case][1], case
        np.testing.assert_array_equal(after, data(0, SMALL) + data(1, SMALL))


def mean_of_ints(rank, name):
    a = np.arange(4)
    try:
        col.allreduce(a, group_name=name, op=ReduceOp.MEAN)
    except Exception as e:          # noqa: BLE001 - the test checks which
        return type(e).__name__, str(e), a
    return None, None, a


@pytest.mark.parametrize("backend", ["shm", "ring", "gloo"])
def test_mean_of_an_int_array_is_refused_and_leaves_it_unchanged(shoal_cluster, backend):
    g = new_group(backend, 2, timeout_s=10)
    for kind, message, after in g.run(mean_of_ints):
        assert (kind, message) == ("TypeError",
                                   "ReduceOp.MEAN needs a floating-point tensor, got int64")
        np.testing.assert_array_equal(after, np.arange(4))


# ------------------------------------------------------------------ races between members
def join_creating_slowly(rank, name, marks):
    """init_collective_group, with this process's creation of the rendezvous
    actor held between registering its name and submitting it (touches
    ``registered``, waits for ``go``): the window another member may fall in."""
    from shoal.core import get_core
    core = get_core()
    submit = core.submit

    def held(spec):
        del core.submit                       # only the first: the rendezvous actor
        touch(os.path.join(marks, "registered"))
        assert wait_for_file(os.path.join(marks, "go"))
        return submit(spec)

    core.submit = held
    try:
        return join(rank, name, 2, "shm", timeout_s=3)
    finally:
        core.__dict__.pop("submit", None)


def join_signalling_rendezvous(rank, name, marks):
    """init_collective_group; touches ``found`` once it has the rendezvous actor."""
    from shoal.collective import rendezvous
    find = rendezvous.rendezvous_actor

    def found(group_name):
        actor = find(group_name)
        touch(os.path.join(marks, "found"))
        return actor

    rendezvous.rendezvous_actor = found
    try:
        return join(rank, name, 2, "shm", timeout_s=3)
    finally:
        rendezvous.rendezvous_actor = find


def test_members_joining_at_once_meet_at_one_rendezvous(shoal_cluster, tmp_path):
    a, b = Member.remote(), Member.remote()
    first = a.run.remote(join_creating_slowly, 0, "g", str(tmp_path))
    assert wait_for(lambda: (tmp_path / "registered").exists(), timeout=30,
                    what="rank 0 to register the rendezvous actor's name")
    second = b.run.remote(join_signalling_rendezvous, 1, "g", str(tmp_path))
    wait_for(lambda: (tmp_path / "found").exists(), timeout=30,
             what="rank 1 to get a rendezvous actor")
    touch(str(tmp_path / "go"))
    assert shoal.get([first, second], timeout=GET_TIMEOUT) == [("shm", 0, 2), ("shm", 1, 2)]


def allreduce_then_destroy(rank, name, marks):
    """Rank 1 is held between the phase that makes every input visible and
    reading the other slots, until rank 0 (done) has destroyed its group;
    at most a few seconds, so a destroy that waits for rank 1 ends too."""
    from shoal.collective.shm import ShmGroup
    check = ShmGroup._check_same

    def held(self):
        wait_for_file(os.path.join(marks, "destroyed"), seconds=3)
        return check(self)

    if rank == 1:
        ShmGroup._check_same = held
    try:
        result = col.allreduce(data(rank, SMALL), group_name=name)
    finally:
        ShmGroup._check_same = check
    col.destroy_collective_group(name)
    if rank == 0:
        touch(os.path.join(marks, "destroyed"))
    return result


def test_a_member_destroying_right_after_an_allreduce_lets_the_others_finish_it(
        shoal_cluster, tmp_path):
    g = new_group("shm", 2)
    want = data(0, SMALL) + data(1, SMALL)
    for got in g.run(allreduce_then_destroy, str(tmp_path)):
        np.testing.assert_array_equal(got, want)


def send_both_ways(rank, name, n):
    peer = 1 - rank
    col.send(np.full(n, float(rank)), peer, group_name=name)
    return col.recv(np.zeros(n), peer, group_name=name)


BIG_MESSAGE = 1 << 21        # 16 MB of float64: more than loopback sockets buffer


@pytest.mark.parametrize("backend, n", [
    ("shm", 4), ("shm", BIG_MESSAGE), ("ring", 4), ("ring", BIG_MESSAGE), ("gloo", 4),
    ("gloo", BIG_MESSAGE)])
def test_two_members_may_send_to_each_other_before_receiving(shoal_cluster, backend, n):
    g = new_group(backend, 2, timeout_s=3)
    got = g.run(send_both_ways, n)
    np.testing.assert_array_equal(got[0], np.full(n, 1.0))
    np.testing.assert_array_equal(got[1], np.full(n, 0.0))


def send_then_change(rank, name, n):
    if rank == 0:
        a = np.full(n, 7.0)
        col.send(a, 1, group_name=name)
        a[:] = -1.0                     # send returned: the message is already its own copy
        return None
    return col.recv(np.zeros(n), 0, group_name=name)


@pytest.mark.parametrize("backend, n", [("shm", 4), ("shm", BIG_MESSAGE), ("ring", 4),
                                        ("ring", BIG_MESSAGE), ("gloo", 4),
                                        ("gloo", BIG_MESSAGE)])
def test_an_array_changed_after_send_returns_arrives_as_it_was_sent(shoal_cluster, backend, n):
    g = new_group(backend, 2, timeout_s=10)
    _, got = g.run(send_then_change, n)
    np.testing.assert_array_equal(got, np.full(n, 7.0))


def send_then_destroy(rank, name, marks):
    if rank == 0:
        col.send(np.arange(BIG_MESSAGE, dtype=np.float64), 1, group_name=name)
        touch(os.path.join(marks, "sent"))
        col.destroy_collective_group(name)      # waits until the message went out
        return None
    wait_for_file(os.path.join(marks, "sent"), seconds=10)
    return col.recv(np.zeros(BIG_MESSAGE), 0, group_name=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_member_that_sends_then_leaves_still_delivers_its_message(shoal_cluster, backend,
                                                                    tmp_path):
    """send returns before the peer receives: leaving right after must not
    lose the message (rank 1 starts its recv only once rank 0's send returned)."""
    g = new_group(backend, 2, timeout_s=10)
    _, got = g.run(send_then_destroy, str(tmp_path))
    np.testing.assert_array_equal(got, np.arange(BIG_MESSAGE, dtype=np.float64))
