"""shoal.collective when a member dies: in every kind of operation, while a
torch group is idle, and while a group forms. Every group here has a
``timeout_s`` of 300 s, far beyond the tests' own timeouts: a test passes
only if the death was noticed as a death, never by waiting the group out.

Each test has a cluster and members of its own (``shoal_cluster``): a
failure leaves a group unusable. A member is killed by pid (SIGKILL) or
with ``shoal.kill``; waits poll conditions with deadlines.
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

from ..conftest import touch, wait_for
from .test_collective import GET_TIMEOUT, SMALL, Group, Member, rendezvous_gone
from .test_collective_failures import needs, raises

cloudpickle.register_pickle_by_value(sys.modules[__name__])   # as test_collective.py does

TIMEOUT_S = 300


def pid_of(actor) -> int:
    return shoal.get(actor.pid.remote(), timeout=GET_TIMEOUT)


def assert_names_a_death(message: str, rank: int) -> None:
    assert f"rank {rank}" in message, message
    assert "timed out" not in message and "did not join" not in message, message


# ------------------------------------------------------------------ in each operation
OPERATIONS = {
    "broadcast": lambda name: col.broadcast(np.zeros(SMALL), src_rank=0, group_name=name),
    "barrier": lambda name: col.barrier(group_name=name),
    "reducescatter": lambda name: col.reducescatter(np.zeros(SMALL), [np.ones(SMALL)] * 2,
                                                    group_name=name),
    "allgather": lambda name: col.allgather(None, np.ones(SMALL), group_name=name),
    "alltoall": lambda name: col.alltoall(None, np.ones((2, SMALL)), group_name=name),
    "recv": lambda name: col.recv(np.zeros(SMALL), 0, group_name=name),
}
# gloo cases start torch in two fresh workers (~3 s each): recv runs in the
# quick subset (a gloo recv cannot be watched, only failed by gloo), the rest are heavy
CASES = [pytest.param(b, op, marks=[pytest.mark.heavy] if b == "gloo" and op != "recv" else [])
         for b in ("shm", "ring", "gloo") for op in OPERATIONS]


def wait_in(rank, name, op, marks):
    touch(os.path.join(marks, str(rank)))
    return OPERATIONS[op](name)


@pytest.mark.parametrize("backend, op", CASES)
def test_a_member_killed_while_the_other_waits_in_an_operation_fails_it(
        shoal_cluster, backend, op, tmp_path):
    """Rank 1 waits in ``op`` (rank 0 never calls it) and rank 0 is SIGKILLed."""
    needs(backend)
    g = Group([Member.remote() for _ in range(2)], backend, "g", TIMEOUT_S)
    g.form()
    dead = pid_of(g.members[0])
    waiting = g.members[1].run.remote(wait_in, 1, g.name, op, str(tmp_path))
    wait_for(lambda: os.listdir(tmp_path) == ["1"], timeout=30,
             what=f"rank 1 to start its {op}")
    os.kill(dead, signal.SIGKILL)
    assert_names_a_death(raises(waiting, "collective group 'g'"), 0)


# ------------------------------------------------------------------ a torch group, idle
def next_op_once_a_death_is_known(rank, name):
    """Wait (bounded) until this member's group knows a member died, with
    no operation pending, then try one."""
    from shoal.collective import api
    group = api._groups[name]
    wait_for(lambda: group._watchdog.failure, timeout=30, what="the watchdog to see the death")
    return col.allreduce(np.ones(SMALL), group_name=name)


def test_a_gloo_group_learns_of_a_death_while_idle_and_its_next_operation_says_so(
        shoal_cluster):
    """The watchdog, not a failed operation, finds the death: rank 0's next
    operation fails at once, before anything reaches gloo."""
    needs("gloo")
    g = Group([Member.remote() for _ in range(2)], "gloo", "g", TIMEOUT_S)
    g.form()
    dead = pid_of(g.members[1])
    os.kill(dead, signal.SIGKILL)
    message = raises(g.members[0].run.remote(next_op_once_a_death_is_known, 0, g.name),
                     rf"rank 1 \(pid {dead}\) died; the group failed before allreduce")
    assert_names_a_death(message, 1)


# ------------------------------------------------------------------ while a group forms
def allreduce_joining_lazily(rank, name):
    return col.allreduce(np.ones(SMALL), group_name=name)


@pytest.mark.parametrize("how", ["shoal.kill before the others join",
                                 "SIGKILL while the others join"])
def test_a_declared_member_that_dies_before_joining_fails_the_others_joins(
        shoal_cluster, how, tmp_path):
    members = [Member.remote() for _ in range(3)]
    dead = pid_of(members[2])
    col.create_collective_group(members, 3, [0, 1, 2], backend="shm", group_name="g",
                                timeout_s=TIMEOUT_S)
    if how.startswith("shoal.kill"):
        shoal.kill(members[2])
    refs = [m.run.remote(allreduce_joining_lazily, r, "g") for r, m in enumerate(members[:2])]
    if how.startswith("SIGKILL"):
        os.kill(dead, signal.SIGKILL)
    for ref in refs:
        message = raises(ref, r"rank 2 \(actor [0-9a-f]+\) died before joining")
        assert_names_a_death(message, 2)
        assert "the group cannot form" in message
    col.destroy_collective_group("g")          # forget the declaration (ends the rendezvous)
    wait_for(lambda: rendezvous_gone("g"), timeout=15, what="the rendezvous actor to exit")


def test_a_member_that_dies_after_joining_fails_the_others_joins(shoal_cluster):
    """Ranks 0 and 2 joined, rank 1 has not come yet; rank 2 is SIGKILLed:
    rank 0's join fails naming it, and the rendezvous actor ends."""
    g = Group([Member.remote() for _ in range(3)], "shm", "g", TIMEOUT_S)
    dead = pid_of(g.members[2])
    refs = g.start_joins(ranks=[0, 2])
    rdv = shoal.get_actor("shoal.collective:g")
    wait_for(lambda: shoal.get(rdv.joined.remote(), timeout=GET_TIMEOUT) == [0, 2], timeout=30,
             what="ranks 0 and 2 to join")
    os.kill(dead, signal.SIGKILL)
    message = raises(refs[0], rf"rank 2 \(pid {dead}\) died; the group cannot form "
                              rf"\(joined: \[0, 2\]\)")
    assert_names_a_death(message, 2)
    wait_for(lambda: rendezvous_gone("g"), timeout=15, what="the rendezvous actor to exit")
