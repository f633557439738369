"""shoal.collective across nodes: members placed on two node agents of a
loopback cluster (tests/cluster's ``cluster`` and ``driver``) form a group
over the TCP ring when the backend is "auto", and a member that dies there
fails the other's operation."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import shoal

from ..cluster.conftest import cluster_env  # noqa: F401
from ..cluster.test_multinode import GET_TIMEOUT, affinity, cluster, driver  # noqa: F401
from ..conftest import wait_for
from .test_collective import Group, Member, allreduce_every_op, data, expected
from .test_collective_failures import allreduce_after_mark, raises


def node_of(rank, name):
    return os.environ["SHOAL_NODE_ID"]


def group_across(cluster, driver, name: str) -> Group:
    """Rank 0 on the head node, rank 1 on node b; formed with backend "auto"."""
    cluster.add("b")
    driver()
    cluster.wait_linked()
    nodes = [cluster.ids["head"], cluster.ids["b"]]
    members = [Member.options(scheduling_strategy=affinity(n, soft=False)).remote()
               for n in nodes]
    g = Group(members, "auto", name, timeout_s=30)
    assert g.run(node_of) == nodes
    assert g.form() == [("ring", 0, 2), ("ring", 1, 2)]
    return g


@pytest.mark.timeout(60)
def test_auto_picks_the_ring_for_members_on_two_nodes(cluster, driver):
    g = group_across(cluster, driver, "across")
    for rank, results in enumerate(g.run(allreduce_every_op)):
        for (op, n), got in results.items():
            np.testing.assert_array_equal(got, expected(op, [data(0, n), data(1, n)]),
                                          err_msg=f"rank {rank}, {op}, n={n}")
    g.destroy()


@pytest.mark.timeout(60)
def test_a_member_killed_on_another_node_fails_the_others_allreduce(cluster, driver, tmp_path):
    g = group_across(cluster, driver, "g")
    dead = shoal.get(g.members[1].pid.remote(), timeout=GET_TIMEOUT)
    marks = tmp_path / "marks"          # tmp_path also holds the cluster's state dir
    marks.mkdir()
    waiting = g.members[0].run.remote(allreduce_after_mark, 0, g.name, str(marks))
    wait_for(lambda: os.listdir(marks) == ["0"], timeout=30,
             what="rank 0 to start its allreduce")
    os.kill(dead, signal.SIGKILL)
    raises(waiting, "lost the connection to rank 1")
