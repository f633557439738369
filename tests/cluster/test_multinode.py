"""Several nodes working together (node/peers.py): a head with a 1-CPU node
and extra node agents, all real processes on loopback, and a driver in this
process connected to the head's node with ``shoal.init(address="auto")``.

Tasks report where they ran (the ``SHOAL_NODE_ID`` of their worker); the
tests assert results and places, never times. Every wait polls a condition
with a deadline. Each node carries a marker resource of its own
(``at_<name>``) so that probes can reach exactly that node: ``Cluster.wait_linked``
runs a task on every node that submits one to every other node, which only
returns once every pair of nodes is linked and knows the other (a forwarded
task only goes over a link, to a node in the forwarding node's view).
"""
from __future__ import annotations

import os
import signal
import sys

import cloudpickle
import numpy as np
import psutil
import pytest

import shoal
from shoal.cluster import launch
from shoal.exceptions import (NodeDiedError, ObjectLostError, TaskError,
                              TaskUnschedulableError)
from shoal.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .. import conftest
from ..conftest import touch, wait_for, wait_for_file

# Tasks defined here run in workers of the node agents, which cannot import
# this test module (nor tests/conftest.py, whose helpers they call) wherever
# pytest runs from: ship their functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(conftest)

BIG = 20 * 1024 * 1024 // 8          # float64s in a 20 MB array
GET_TIMEOUT = 60


# ------------------------------------------------------------------ in tasks
def node_id() -> str:
    return os.environ["SHOAL_NODE_ID"]


def big_array(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(BIG)


@shoal.remote
def where():
    return node_id()


@shoal.remote
def hop(to: str):
    """Run on one node, submit to the node with marker resource ``to``."""
    return node_id(), shoal.get(where.options(resources={to: 0.01}).remote())


@shoal.remote
def gate(i, started, release):
    """Mark ``started/<i>-<node id>``, wait for the file ``release``; where it ran."""
    touch(os.path.join(started, f"{i}-{node_id()}"))
    assert wait_for_file(release)
    return node_id()


@shoal.remote(max_retries=1)
def held_task(started, release):
    """Mark ``started/<node id>``, wait for the file ``release``; where it ran."""
    touch(os.path.join(started, node_id()))
    assert wait_for_file(release)
    return node_id()


# -------------------------------------------------------------------- cluster
class Cluster:
    """The head (node "head") and the nodes added by name."""

    def __init__(self):
        self.address = None
        self.ids: dict = {}        # name -> node id (hex)
        self.pids: dict = {}       # name -> agent pid

    def start_head(self, num_cpus=1, resources=None):
        info = launch.start_head("127.0.0.1", 0, num_cpus=num_cpus,
                                 resources={"at_head": 1, **(resources or {})})
        self.address = info["address"]
        self._record("head", info["node_pid"])
        return self

    def add(self, name: str, num_cpus=1, resources=None) -> str:
        info = launch.start_node(self.address, num_cpus=num_cpus,
                                 resources={f"at_{name}": 1, **(resources or {})})
        self._record(name, info["node_pid"])
        return self.ids[name]

    def _record(self, name: str, pid: int) -> None:
        (row,) = [n for n in launch.status()["nodes"] if n["pid"] == pid]
        self.ids[name] = row["node_id"]
        self.pids[name] = pid

    def state(self, name: str) -> str:
        (row,) = [n for n in launch.status()["nodes"] if n["node_id"] == self.ids[name]]
        return row["state"]

    def name_of(self, nid: str) -> str:
        return {v: k for k, v in self.ids.items()}[nid]

    def wait_linked(self, names=None) -> None:
        """Every ordered pair of ``names`` (default: all alive nodes) can send
        each other tasks. Needs a connected driver."""
        names = list(names or self.ids)
        refs, expect = [], []
        for a in names:
            for b in names:
                if a != b:
                    refs.append(hop.options(resources={f"at_{a}": 0.01}).remote(f"at_{b}"))
                    expect.append((self.ids[a], self.ids[b]))
        assert [tuple(x) for x in shoal.get(refs, timeout=GET_TIMEOUT)] == expect

    def kill(self, name: str) -> None:
        """SIGKILL the node's agent; its workers die with it (PDEATHSIG).
        Returns once the head has declared it dead."""
        agent = psutil.Process(self.pids[name])
        workers = agent.children(recursive=True)
        agent.send_signal(signal.SIGKILL)
        wait_for(lambda: not any(_running(p) for p in [agent, *workers]), timeout=15,
                 what=f"node {name}'s agent and workers to exit")
        wait_for(lambda: self.state(name) == "DEAD", timeout=15,
                 what=f"the head to declare node {name} dead")


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def cluster(cluster_env):
    return Cluster().start_head()


@pytest.fixture
def driver(cluster):
    """Connect this process as a driver (after the test's nodes are added)."""
    def connect():
        shoal.init(address="auto")
        return cluster
    try:
        yield connect
    finally:
        if shoal.is_initialized():
            shoal.shutdown()


def affinity(nid: str, soft: bool):
    return NodeAffinitySchedulingStrategy(node_id=nid, soft=soft)


def start_held_task(tmp_path, nid: str, **options):
    """Submit ``held_task`` with ``options`` and wait until it has started on
    node ``nid``: its ref, the directory of its markers, its release file."""
    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    ref = held_task.options(**options).remote(str(started), str(release))
    wait_for(lambda: os.listdir(started) == [nid], timeout=30, what="the task to start on b")
    return ref, started, release


# ---------------------------------------------------------------- placement
@pytest.mark.timeout(60)
def test_a_task_needing_a_custom_resource_runs_on_the_node_that_has_it(cluster, driver):
    b = cluster.add("b", resources={"edge": 1})
    cluster.add("c")
    driver()

    @shoal.remote(resources={"edge": 1})
    def on_edge(x):
        return node_id(), x * x

    assert shoal.get([on_edge.remote(i) for i in range(6)], timeout=GET_TIMEOUT) \
        == [(b, i * i) for i in range(6)]


@pytest.mark.timeout(60)
def test_tasks_overflow_to_another_node_when_the_local_node_is_busy(cluster, driver, tmp_path):
    b = cluster.add("b")
    driver()
    cluster.wait_linked()

    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    refs = [gate.remote(i, str(started), str(release)) for i in range(2)]
    # both run at once, so neither waits behind the other on the 1-CPU head node
    wait_for(lambda: len(os.listdir(started)) == 2, timeout=30,
             what="both tasks to start on two nodes")
    touch(str(release))
    assert sorted(shoal.get(refs, timeout=GET_TIMEOUT)) == sorted([cluster.ids["head"], b])


@pytest.mark.timeout(60)
def test_spread_uses_several_nodes(cluster, driver):
    cluster.add("b")
    cluster.add("c")
    driver()
    cluster.wait_linked()
    places = shoal.get([where.options(scheduling_strategy="SPREAD").remote()
                        for _ in range(9)], timeout=GET_TIMEOUT)
    assert set(places) <= set(cluster.ids.values())
    assert len(set(places)) >= 2, places


@pytest.mark.timeout(60)
def test_node_affinity_hard_and_soft_to_another_node(cluster, driver):
    b = cluster.add("b")
    c = cluster.add("c")
    driver()
    cluster.wait_linked()

    @shoal.remote
    def ids():
        return node_id(), shoal.get_runtime_context().get_node_id()

    for target, soft in [(b, False), (b, True), (c, False), (c, True),
                         (cluster.ids["head"], False)]:
        got = shoal.get([ids.options(scheduling_strategy=affinity(target, soft)).remote()
                         for _ in range(3)], timeout=GET_TIMEOUT)
        assert got == [(target, target)] * 3, (cluster.name_of(target), soft, got)

    nowhere = "ab" * 16
    with pytest.raises(TaskUnschedulableError):
        shoal.get(where.options(scheduling_strategy=affinity(nowhere, False)).remote(),
                  timeout=GET_TIMEOUT)
    assert shoal.get(where.options(scheduling_strategy=affinity(nowhere, True)).remote(),
                     timeout=GET_TIMEOUT) in cluster.ids.values()


@pytest.mark.timeout(60)
def test_soft_affinity_to_the_busy_local_node_waits_for_it(cluster, driver, tmp_path):
    cluster.add("b")
    driver()
    cluster.wait_linked()
    head = cluster.ids["head"]

    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    here = affinity(head, True)
    first = gate.options(scheduling_strategy=here).remote(0, str(started), str(release))
    wait_for(lambda: os.listdir(started) == [f"0-{head}"], timeout=30,
             what="the first task to start on the head node")
    second = gate.options(scheduling_strategy=here).remote(1, str(started), str(release))

    def settled():
        # the second task either queues on the busy head node (as it should)
        # or starts elsewhere
        row = next(n for n in launch.status()["nodes"] if n["node_id"] == head)
        return len(os.listdir(started)) == 2 or row["pending_tasks"] >= 1
    wait_for(settled, timeout=30, what="the second task to queue or start")
    touch(str(release))
    assert shoal.get([first, second], timeout=GET_TIMEOUT) == [head, head]


# ------------------------------------------------------------------ objects
@pytest.mark.timeout(60)
def test_a_large_result_from_one_node_is_read_on_another_node_and_by_the_driver(cluster,
                                                                                 driver):
    b = cluster.add("b", resources={"edge": 1})
    c = cluster.add("c")
    driver()
    cluster.wait_linked()

    @shoal.remote(resources={"edge": 1})
    def produce(seed):
        return big_array(seed)

    @shoal.remote
    def summarize(a):
        return node_id(), a.shape, a.dtype.str, float(a.sum()), a[:4].tolist(), a[-4:].tolist()

    expected = big_array(11)
    assert expected.nbytes == 20 * 1024 * 1024
    ref = produce.remote(11)
    got = shoal.get(summarize.options(scheduling_strategy=affinity(c, False)).remote(ref),
                    timeout=GET_TIMEOUT)
    assert got == (c, expected.shape, expected.dtype.str, float(expected.sum()),
                   expected[:4].tolist(), expected[-4:].tolist())
    on_b = shoal.get(summarize.options(scheduling_strategy=affinity(b, False)).remote(ref),
                     timeout=GET_TIMEOUT)
    assert on_b[0] == b and on_b[3] == float(expected.sum())
    value = shoal.get(ref, timeout=GET_TIMEOUT)
    assert np.array_equal(value, expected)


@pytest.mark.timeout(60)
def test_a_large_argument_put_by_the_driver_is_read_on_another_node(cluster, driver):
    b = cluster.add("b", resources={"edge": 1})
    driver()
    cluster.wait_linked()

    @shoal.remote(resources={"edge": 1})
    def checksum(a):
        return node_id(), float(a.sum()), a[123456].item()

    data = big_array(5)
    ref = shoal.put(data)
    assert shoal.get(checksum.remote(ref), timeout=GET_TIMEOUT) \
        == (b, float(data.sum()), data[123456].item())


@pytest.mark.timeout(60)
def test_refs_nested_in_a_value_from_another_node(cluster, driver):
    b = cluster.add("b", resources={"edge": 1})
    c = cluster.add("c")
    driver()
    cluster.wait_linked()

    @shoal.remote(resources={"edge": 1})
    def make_refs(n):
        refs = [shoal.put({"i": i, "on": node_id()}) for i in range(n)]
        refs.append(shoal.put(big_array(3)))
        return {"node": node_id(), "refs": refs}

    @shoal.remote
    def read_inner(value):
        small = shoal.get(value["refs"][:-1])
        big = shoal.get(value["refs"][-1])
        return node_id(), [s["i"] for s in small], float(big.sum())

    out = make_refs.remote(5)
    value = shoal.get(out, timeout=GET_TIMEOUT)
    assert value["node"] == b and len(value["refs"]) == 6
    assert all(isinstance(r, shoal.ObjectRef) for r in value["refs"])
    assert shoal.get(value["refs"][:-1], timeout=GET_TIMEOUT) \
        == [{"i": i, "on": b} for i in range(5)]
    assert np.array_equal(shoal.get(value["refs"][-1], timeout=GET_TIMEOUT), big_array(3))
    # and a third node reads the nested refs too, given the outer value
    assert shoal.get(read_inner.options(scheduling_strategy=affinity(c, False)).remote(out),
                     timeout=GET_TIMEOUT) == (c, list(range(5)), float(big_array(3).sum()))


@pytest.mark.timeout(60)
def test_cluster_resources_and_nodes_cover_every_node(cluster, driver):
    b = cluster.add("b", num_cpus=2, resources={"edge": 3})
    driver()
    # the driver's node hears of the others with its next heartbeat
    wait_for(lambda: {n["NodeID"] for n in shoal.nodes()} == {cluster.ids["head"], b},
             timeout=10)
    total = shoal.cluster_resources()
    assert total["CPU"] == 3 and total["edge"] == 3


# -------------------------------------------------------- errors and output
@pytest.mark.timeout(60)
def test_an_exception_on_another_node_reaches_the_driver(cluster, driver):
    b = cluster.add("b", resources={"edge": 1})
    driver()

    @shoal.remote(resources={"edge": 1}, max_retries=0)
    def fails():
        raise ValueError(f"boom on {node_id()}")

    with pytest.raises(TaskError) as info:
        shoal.get(fails.remote(), timeout=GET_TIMEOUT)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value.cause, ValueError)
    assert f"boom on {b}" in str(info.value.cause)
    assert "fails" in info.value.traceback_str and f"boom on {b}" in info.value.traceback_str


@pytest.mark.timeout(60)
def test_print_output_from_another_node_reaches_the_driver(cluster, driver, capfd):
    b = cluster.add("b", resources={"edge": 1})
    driver()

    @shoal.remote(resources={"edge": 1})
    def chatty(token):
        print(f"{token} printed on {node_id()}")
        print(f"{token} to stderr", file=sys.stderr)
        return os.getpid()

    token = "multinode-" + os.urandom(4).hex()
    pid = shoal.get(chatty.remote(token), timeout=GET_TIMEOUT)
    assert pid not in (os.getpid(), *cluster.pids.values())
    seen = {"out": "", "err": ""}

    def arrived():
        out, err = capfd.readouterr()
        seen["out"] += out
        seen["err"] += err
        return f"{token} printed on {b}" in seen["out"] and f"{token} to stderr" in seen["err"]
    wait_for(arrived, timeout=30, what="the other node's output to reach the driver")
    line = next(x for x in seen["out"].splitlines() if f"{token} printed on" in x)
    assert f"(chatty pid={pid})" in line


# -------------------------------------------------------------- node death
@pytest.mark.heavy
@pytest.mark.timeout(60)
def test_a_task_on_a_killed_node_is_retried_on_another_node(cluster, driver, tmp_path):
    b = cluster.add("b", resources={"edge": 1})
    driver()

    @shoal.remote(resources={"edge": 1}, max_retries=1)
    def long_task(x, started, release):
        touch(os.path.join(started, node_id()))
        assert wait_for_file(release)
        return node_id(), x * 2

    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    ref = long_task.remote(21, str(started), str(release))
    wait_for(lambda: os.listdir(started) == [b], timeout=30, what="the task to start on b")
    c = cluster.add("c", resources={"edge": 1})      # the only other node that can run it
    cluster.kill("b")
    touch(str(release))
    assert shoal.get(ref, timeout=GET_TIMEOUT) == (c, 42)
    assert sorted(os.listdir(started)) == sorted([b, c])


@pytest.mark.heavy
@pytest.mark.timeout(60)
def test_a_task_on_a_killed_node_without_retries_raises_node_died(cluster, driver, tmp_path):
    b = cluster.add("b", resources={"edge": 1})
    driver()

    @shoal.remote(resources={"edge": 1}, max_retries=0)
    def long_task(started):
        touch(os.path.join(started, node_id()))
        assert wait_for_file(os.path.join(started, "never"))
        return "finished"

    started = tmp_path / "started"
    started.mkdir()
    ref = long_task.remote(str(started))
    wait_for(lambda: os.listdir(started) == [b], timeout=30, what="the task to start on b")
    cluster.add("c", resources={"edge": 1})          # could run it, but must not
    cluster.kill("b")
    with pytest.raises(NodeDiedError):
        shoal.get(ref, timeout=GET_TIMEOUT)
    assert os.listdir(started) == [b]


@pytest.mark.heavy
@pytest.mark.timeout(60)
def test_a_large_result_lost_with_its_node_is_rebuilt_from_lineage(cluster, driver, tmp_path):
    b = cluster.add("b", resources={"edge": 1})
    driver()

    @shoal.remote(resources={"edge": 1})
    def produce(seed, runs):
        touch(os.path.join(runs, f"{node_id()}-{os.getpid()}"))
        return big_array(seed)

    runs = tmp_path / "runs"
    runs.mkdir()
    ref = produce.remote(9, str(runs))
    ready, _ = shoal.wait([ref], timeout=GET_TIMEOUT)   # made on b, not fetched here
    assert ready == [ref]
    assert [r.split("-")[0] for r in os.listdir(runs)] == [b]
    c = cluster.add("c", resources={"edge": 1})
    cluster.wait_linked()
    cluster.kill("b")
    assert np.array_equal(shoal.get(ref, timeout=GET_TIMEOUT), big_array(9))
    assert sorted(r.split("-")[0] for r in os.listdir(runs)) == sorted([b, c])


@pytest.mark.heavy
@pytest.mark.timeout(60)
def test_a_large_result_lost_with_its_node_and_no_retries_is_object_lost(cluster, driver):
    cluster.add("b", resources={"edge": 1})
    driver()

    @shoal.remote(resources={"edge": 1}, max_retries=0)
    def produce(seed):
        return big_array(seed)

    ref = produce.remote(4)
    ready, _ = shoal.wait([ref], timeout=GET_TIMEOUT)
    assert ready == [ref]
    cluster.add("c", resources={"edge": 1})
    cluster.kill("b")
    with pytest.raises(ObjectLostError):
        shoal.get(ref, timeout=GET_TIMEOUT)


@pytest.mark.heavy
@pytest.mark.timeout(60)
def test_soft_affinity_to_a_node_that_dies_retries_elsewhere(cluster, driver, tmp_path):
    b = cluster.add("b", resources={"edge": 1})
    driver()
    cluster.wait_linked()        # so the task is routed to b by its affinity
    ref, started, release = start_held_task(tmp_path, b, resources={"edge": 1},
                                            scheduling_strategy=affinity(b, True))
    c = cluster.add("c", resources={"edge": 1})
    cluster.wait_linked(["head", "c"])          # b's CPU is taken by the task
    cluster.kill("b")
    touch(str(release))
    # a deadline, not a wait: c is linked, so the retry starts at once
    assert shoal.get(ref, timeout=10) == c
    assert sorted(os.listdir(started)) == sorted([b, c])


@pytest.mark.heavy
@pytest.mark.timeout(60)
def test_hard_affinity_to_a_node_that_dies_never_runs_elsewhere(cluster, driver, tmp_path):
    b = cluster.add("b")
    driver()
    cluster.wait_linked()
    ref, started, release = start_held_task(tmp_path, b,
                                            scheduling_strategy=affinity(b, False))
    cluster.kill("b")
    touch(str(release))
    try:
        with pytest.raises((NodeDiedError, TaskUnschedulableError)):
            shoal.get(ref, timeout=10)
    finally:
        assert os.listdir(started) == [b], "the task ran on another node"


@pytest.mark.heavy
@pytest.mark.timeout(90)
def test_a_reader_whose_copy_died_before_it_fetched_asks_the_owner_which_rebuilds(
        cluster, driver, tmp_path):
    """The driver's node lends c a marker for a result on b; b dies before
    c's task fetches it (c's only CPU is busy); c asks the driver's node
    again, which rebuilds the result on d, and c's task reads that copy."""
    b = cluster.add("b", resources={"edge": 1})
    c = cluster.add("c")
    d = cluster.add("d", resources={"edge": 1})
    driver()
    cluster.wait_linked()

    @shoal.remote(resources={"edge": 1}, max_retries=2)
    def produce(seed, runs):
        touch(os.path.join(runs, node_id()))
        return big_array(seed)

    @shoal.remote
    def blocker(started, release):
        touch(started)
        return wait_for_file(release)

    @shoal.remote
    def total(a):
        return node_id(), float(a.sum())

    runs, started, release = tmp_path / "runs", tmp_path / "started", tmp_path / "release"
    runs.mkdir()
    ref = produce.options(scheduling_strategy=affinity(b, True)).remote(5, str(runs))
    shoal.wait([ref], timeout=GET_TIMEOUT)                 # made on b, not fetched
    busy = blocker.options(scheduling_strategy=affinity(c, False)).remote(str(started),
                                                                         str(release))
    wait_for(lambda: started.exists(), timeout=30, what="c's CPU to be taken")
    out = total.options(scheduling_strategy=affinity(c, False)).remote(ref)  # queued on c
    cluster.kill("b")
    touch(str(release))
    assert shoal.get(busy, timeout=GET_TIMEOUT) is True
    assert shoal.get(out, timeout=GET_TIMEOUT) == (c, float(big_array(5).sum()))
    assert sorted(os.listdir(runs)) == sorted([b, d])
