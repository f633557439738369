"""shoal.collective's liveness checks without a cluster (liveness.py): the
watchdog a torch group runs, on a fake NCCL-like process group whose
``wait()`` returns at once (as NCCL's does: it only makes the stream wait),
and the lookups of members on other nodes with fake answers. A "member" on
this node is a process the test starts and SIGKILLs by pid.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import psutil
import pytest

from shoal.collective import CollectiveError, ReduceOp
from shoal.collective.liveness import Others, Watchdog

from ..conftest import wait_for


@pytest.fixture
def other_process():
    """A process standing in for another member on this node; killed after."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def member(pid: int, node: str = "here") -> dict:
    return {"pid": pid, "started": psutil.Process(pid).create_time(), "node_id": node}


def kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(10)


# ------------------------------------------------------------------ a torch group's watchdog
class FakeWork:
    """NCCL-like: wait() returns at once, the work never completes."""

    def wait(self, timeout=None):
        return True

    def is_completed(self):
        return False


class FakeNcclPG:
    def __init__(self):
        self.aborted = False
        self.posted = 0

    def allreduce(self, tensors, opts):
        self.posted += 1
        return FakeWork()

    def abort(self):
        self.aborted = True


def fake_nccl_group(members: list[dict]):
    torch_group = pytest.importorskip("shoal.collective.torch_group")
    dist = pytest.importorskip("torch.distributed")

    class FakeNcclGroup(torch_group.TorchGroup):
        def _make_pg(self, prefix, host, timeout):
            import torch
            return FakeNcclPG(), torch.device("cpu")

    return FakeNcclGroup("g", 0, len(members), members, "id", 300.0, "nccl", "127.0.0.1",
                         store=dist.HashStore())


def test_a_member_dying_aborts_an_nccl_group_and_fails_its_next_operation(other_process):
    import torch
    g = fake_nccl_group([member(os.getpid()), member(other_process.pid)])
    try:
        g.allreduce(torch.ones(4), ReduceOp.SUM)          # posted; the host is not blocked
        assert g.pg.posted == 1 and not g.pg.aborted
        kill(other_process)
        wait_for(lambda: g.pg.aborted, timeout=10, what="the watchdog to abort the group")
        with pytest.raises(CollectiveError, match=rf"collective group 'g': rank 1 \(pid "
                                                  rf"{other_process.pid}\) died; the group "
                                                  rf"failed before allreduce"):
            g.allreduce(torch.ones(4), ReduceOp.SUM)
        assert g.pg.posted == 1                          # nothing more reached the GPU
    finally:
        g.destroy()
    assert not g._watchdog.running


def test_destroying_a_torch_group_stops_and_joins_its_watchdog(other_process):
    g = fake_nccl_group([member(os.getpid()), member(other_process.pid)])
    assert g._watchdog.running
    g.destroy()
    assert not g._watchdog.running and g._watchdog.failure is None


class FakeGlooWork:
    """gloo-like: completes when its future does (the test decides when)."""

    def __init__(self):
        import torch
        self.future = torch.futures.Future()

    def get_future(self):
        return self.future

    def wait(self, timeout=None):
        self.future.wait()
        return True


class FakeGlooPG:
    def __init__(self):
        self.works: list[FakeGlooWork] = []

    def allreduce(self, tensors, opts):
        self.works.append(FakeGlooWork())
        return self.works[-1]


def test_a_gloo_group_left_with_a_pending_collective_is_dropped_once_it_ends(other_process):
    """A member dies while another waits in a gloo allreduce that gloo has not
    failed yet: the wait fails at once, and destroying the group keeps its
    process group (destroying it would wait the operation out) only until
    the operation ends."""
    import weakref
    import torch
    torch_group = pytest.importorskip("shoal.collective.torch_group")
    dist = pytest.importorskip("torch.distributed")

    class FakeGlooGroup(torch_group.TorchGroup):
        def _make_pg(self, prefix, host, timeout):
            return FakeGlooPG(), torch.device("cpu")

    g = FakeGlooGroup("g", 0, 2, [member(os.getpid()), member(other_process.pid)], "id", 300.0,
                      "gloo", "127.0.0.1", store=dist.HashStore())
    pg = g.pg
    kept = weakref.ref(pg)
    errors: list[str] = []

    def waits_in_allreduce():
        try:
            g.allreduce(torch.ones(4), ReduceOp.SUM)
        except CollectiveError as e:
            errors.append(str(e))

    waiter = threading.Thread(target=waits_in_allreduce)
    try:
        waiter.start()
        wait_for(lambda: pg.works, timeout=10, what="the allreduce to be posted")
        kill(other_process)
        waiter.join(30)
        assert not waiter.is_alive()
    finally:
        g.destroy()
    assert len(errors) == 1 and f"rank 1 (pid {other_process.pid}) died (while allreduce)" \
        in errors[0], errors
    (work,) = pg.works
    del pg
    assert kept() is not None and not work.future.done()          # kept while pending
    torch_group.reap_abandoned()
    assert kept() is not None
    work.future.set_exception(RuntimeError("gloo timed out"))      # gloo's own timeout
    del work
    torch_group.reap_abandoned()
    assert kept() is None and not torch_group._ABANDONED


# ------------------------------------------------------------------ members elsewhere
class FakeCluster:
    """Answers for liveness lookups: the nodes in view, dead worker rows."""

    def __init__(self, nodes):
        self.nodes = set(nodes)
        self.dead: dict = {}            # (node, pid) -> end time (s)
        self.asked = 0

    def live_nodes(self):
        self.asked += 1
        return set(self.nodes)

    def dead_workers(self):
        return dict(self.dead)


def others_on(cluster: FakeCluster, members: dict) -> Others:
    return Others(members, here="here", nodes=cluster.live_nodes, workers=cluster.dead_workers)


def test_a_member_whose_node_leaves_the_view_is_lost_with_it():
    cluster = FakeCluster({"here", "b"})
    others = others_on(cluster, {1: {"pid": 11, "started": 1000.0, "node_id": "b"}})
    assert others.dead() == [] and others.lost(1) is None
    cluster.nodes.discard("b")
    assert others.lost(1) == "rank 1 (pid 11) was lost with its node b"
    assert [d.why for d in others.dead()] == ["rank 1 (pid 11) was lost with its node b"]


def test_a_node_never_seen_in_the_view_is_not_taken_for_lost():
    """A driver's own node is never listed: its members are not 'lost'."""
    others = others_on(FakeCluster({"here"}),
                       {1: {"pid": 11, "started": 1000.0, "node_id": "driver-node"}})
    assert others.dead() == [] and others.lost(1) is None


def test_a_dead_worker_row_names_a_member_only_if_it_ended_after_the_member_started():
    cluster = FakeCluster({"here", "b"})
    others = others_on(cluster, {1: {"pid": 11, "started": 1000.0, "node_id": "b"},
                                 2: {"pid": 12, "started": 1000.0, "node_id": "b"}})
    cluster.dead[("b", 11)] = 900.0          # an earlier process with the same pid
    cluster.dead[("b", 12)] = 1005.0
    assert [d.why for d in others.dead()] == ["rank 2 (pid 12) died"]


def test_members_on_this_node_only_ask_nothing_of_the_cluster(other_process):
    cluster = FakeCluster({"here"})
    others = others_on(cluster, {1: member(other_process.pid)})
    assert others.dead() == []
    kill(other_process)
    assert [d.why for d in others.dead()] == [f"rank 1 (pid {other_process.pid}) died"]
    assert cluster.asked == 0


def test_the_watchdog_reports_a_death_elsewhere_once_and_ends():
    cluster = FakeCluster({"here", "b"})
    others = others_on(cluster, {1: {"pid": 11, "started": 1000.0, "node_id": "b"}})
    reports = []
    dog = Watchdog("g", others, reports.append, local_s=0.01, remote_s=0.01)
    dog.start()
    try:
        assert dog.running and reports == []
        cluster.nodes.discard("b")
        wait_for(lambda: not dog.running, timeout=10, what="the watchdog to end")
        assert reports == ["rank 1 (pid 11) was lost with its node b"]
        assert dog.failure == reports[0]
    finally:
        dog.stop()
