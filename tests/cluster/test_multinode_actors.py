"""Actors, named actors, placement groups and drivers across nodes
(node/peers.py, node/spread_pg.py, core/client.py ``join_as_driver``): real
head and node agent processes on loopback, built with test_multinode's
``Cluster`` (every node carries its marker resource ``at_<name>``), and a
driver in this process connected to the head's node (``address="auto"``).

Other drivers run in subprocesses: one on "this machine" (the same state
directory, ``address="auto"``) and one on "another machine" (a state
directory of its own, SHOAL_TOKEN set to the cluster token, joining with
``address=HOST:PORT``: a node of its own that runs nothing). Their scripts
print ``RESULT <json>``; what they need to wait for is a file.

Everything asserts results and places (node ids), never times; every wait
polls a condition with a deadline.
"""
from __future__ import annotations

import json
import signal
import os
import subprocess
import sys
import textwrap

import cloudpickle
import psutil
import pytest

import shoal
from shoal.cluster import launch
from shoal.cluster.state import StateDir
from shoal.exceptions import ActorDiedError
from shoal.util.placement_group import (placement_group, placement_group_table,
                                        remove_placement_group)
from shoal.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..conftest import FILE_HELPERS, wait_for
from .test_multinode import (BIG, GET_TIMEOUT, big_array, cluster, driver,  # noqa: F401
                             node_id, touch, wait_for_file, where)

cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ------------------------------------------------------------------ remote code
@shoal.remote
class Counter:
    def __init__(self):
        self.n = 0

    def inc(self):
        self.n += 1
        return self.n

    def where(self):
        return node_id()

    def gate(self, started, release):
        """Say where it started, wait for ``release``, then count."""
        touch(os.path.join(started, f"{node_id()}-{os.getpid()}"))
        assert wait_for_file(release)
        self.n += 1
        return node_id(), self.n


@shoal.remote
def bump(counter, times):
    """From a task: call the actor ``times`` times through a borrowed handle."""
    return node_id(), [shoal.get(counter.inc.remote()) for _ in range(times)]


def on(name: str) -> dict:
    return {"resources": {f"at_{name}": 0.01}}


def in_bundle(pg, index: int) -> dict:
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, index)}


def started_on(started) -> list[str]:
    """The node ids in the ``gate`` markers of directory ``started``."""
    return sorted(name.rsplit("-", 1)[0] for name in os.listdir(started))


# ------------------------------------------------------------ other drivers
PRELUDE = '''
import json, os, sys, time
import shoal

def emit(value):
    print("RESULT " + json.dumps(value), flush=True)

def node_id():
    return os.environ["SHOAL_NODE_ID"]

''' + FILE_HELPERS + '''
@shoal.remote
class Counter:
    def __init__(self):
        self.n = 0
    def inc(self):
        self.n += 1
        return self.n
    def where(self):
        return node_id()
'''


class Driver:
    """A driver program in a subprocess; killed (with anything it started)
    if the test leaves it running."""

    def __init__(self, code: str, env: dict, **args):
        script = PRELUDE + f"ARGS = {args!r}\n" + textwrap.dedent(code)
        self.proc = subprocess.Popen([sys.executable, "-c", script], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out = self.err = ""

    def finish(self, timeout: float = 90) -> list:
        """Wait for it to exit (successfully); the values it emitted."""
        try:
            self.out, self.err = self.proc.communicate(timeout=timeout)
        finally:
            self.kill()
        assert self.proc.returncode == 0, f"driver failed:\n{self.out}\n{self.err}"
        return [json.loads(line[len("RESULT "):]) for line in self.out.splitlines()
                if line.startswith("RESULT ")]

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                kids = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                kids = []
            for p in [self.proc, *kids]:
                try:
                    p.kill()
                except (psutil.NoSuchProcess, ProcessLookupError):
                    pass
            self.proc.communicate()


@pytest.fixture
def spawn(cluster):
    """Start driver subprocesses; any still running at the end are killed
    (before the cluster is stopped)."""
    started = []

    def start(code: str, env: dict, **args) -> Driver:
        started.append(Driver(code, env, **args))
        return started[-1]
    yield start
    for d in started:
        d.kill()


def here_env() -> dict:
    """A driver on this machine (this state dir: the head's node)."""
    return dict(os.environ)


def elsewhere_env(tmp_path, token: str | None = None) -> dict:
    """A driver on another machine: a state dir of its own, the token by env."""
    env = dict(os.environ)
    state = tmp_path / f"elsewhere-{len(list(tmp_path.glob('elsewhere-*')))}"
    state.mkdir()
    env["SHOAL_STATE_DIR"] = str(state)
    env["SHOAL_TOKEN"] = token if token is not None else \
        open(StateDir().token_path).read().strip()
    return env


# ------------------------------------------------------------------- actors
@pytest.mark.timeout(60)
def test_an_actor_on_another_node_serves_the_driver_and_tasks_on_other_nodes(cluster,
                                                                           driver):
    """Created on the only node with its resource; calls in order; a handle
    passed to tasks on the head node and on c reaches the same actor; kill
    works across nodes; dropping every handle frees the actor's resource."""
    b = cluster.add("b", resources={"edge": 1})
    c = cluster.add("c")
    driver()
    cluster.wait_linked()
    head = cluster.ids["head"]

    counter = Counter.options(resources={"edge": 1}).remote()
    assert shoal.get(counter.where.remote(), timeout=GET_TIMEOUT) == b
    assert shoal.get([counter.inc.remote() for _ in range(10)], timeout=GET_TIMEOUT) \
        == list(range(1, 11))
    # a borrowed handle, used from a task on the head's node, then from c
    assert shoal.get(bump.options(**on("head")).remote(counter, 3), timeout=GET_TIMEOUT) \
        == (head, [11, 12, 13])
    assert shoal.get(bump.options(**on("c")).remote(counter, 3), timeout=GET_TIMEOUT) \
        == (c, [14, 15, 16])
    # both at once: every count exactly once, each task's in order
    both = shoal.get([bump.options(**on(n)).remote(counter, 4) for n in ("head", "c")],
                     timeout=GET_TIMEOUT)
    assert [w for w, _ in both] == [head, c]
    assert sorted(both[0][1] + both[1][1]) == list(range(17, 25))
    assert all(counts == sorted(counts) for _, counts in both)
    assert shoal.get(counter.inc.remote(), timeout=GET_TIMEOUT) == 25

    shoal.kill(counter)
    with pytest.raises(ActorDiedError):
        shoal.get(counter.inc.remote(), timeout=GET_TIMEOUT)
    with pytest.raises(ActorDiedError):                 # and from a task elsewhere
        shoal.get(bump.options(**on("c")).remote(counter, 1), timeout=GET_TIMEOUT)

    # the killed actor gave "edge" back: a new one gets it
    second = Counter.options(resources={"edge": 1}).remote()
    assert shoal.get(second.where.remote(), timeout=GET_TIMEOUT) == b
    assert shoal.get(bump.options(**on("c")).remote(second, 2), timeout=GET_TIMEOUT) \
        == (c, [1, 2])
    # the driver drops its last handle (c's borrowed one went with its task):
    # the actor goes, and "edge" is free for a third
    del second
    third = Counter.options(resources={"edge": 1}).remote()
    assert shoal.get([third.where.remote(), third.inc.remote()], timeout=GET_TIMEOUT) \
        == [b, 1]


def _restart_setup(cluster, driver, tmp_path, max_restarts):
    """An actor with ``w`` (b and c have it) created on b while b is the only
    one, then c joins; a call is left running on b."""
    b = cluster.add("b", resources={"w": 1})
    driver()
    counter = Counter.options(resources={"w": 1}, max_restarts=max_restarts,
                              max_task_retries=max_restarts).remote()
    assert shoal.get([counter.where.remote(), counter.inc.remote(), counter.inc.remote()],
                     timeout=GET_TIMEOUT) == [b, 1, 2]
    c = cluster.add("c", resources={"w": 1})
    cluster.wait_linked()
    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    call = counter.gate.remote(str(started), str(release))
    wait_for(lambda: started_on(started) == [b], timeout=30, what="the call to start on b")
    return counter, call, b, c, started, release


@pytest.mark.heavy
@pytest.mark.timeout(60)
def test_an_actor_restarts_on_another_node_when_its_node_dies_mid_call(cluster, driver,
                                                                       tmp_path):
    counter, call, b, c, started, release = _restart_setup(cluster, driver, tmp_path, 1)
    cluster.kill("b")
    touch(str(release))
    # retried on the restarted actor, on c, with fresh state
    assert shoal.get(call, timeout=GET_TIMEOUT) == (c, 1)
    assert started_on(started) == sorted([b, c])
    assert shoal.get([counter.where.remote(), counter.inc.remote(), counter.inc.remote()],
                     timeout=GET_TIMEOUT) == [c, 2, 3]


@pytest.mark.heavy
@pytest.mark.timeout(60)
def test_an_actor_without_restarts_dies_with_its_node(cluster, driver, tmp_path):
    counter, call, b, c, started, release = _restart_setup(cluster, driver, tmp_path, 0)
    cluster.kill("b")
    touch(str(release))
    with pytest.raises(ActorDiedError) as info:
        shoal.get(call, timeout=GET_TIMEOUT)
    assert "node" in str(info.value) and b[:12] in str(info.value), str(info.value)
    with pytest.raises(ActorDiedError):
        shoal.get(counter.inc.remote(), timeout=GET_TIMEOUT)
    assert started_on(started) == [b]             # never run again, on c or anywhere


# -------------------------------------------------------------- named actors
NAMED = '''
shoal.init(address=ARGS["address"])
out = {"me": shoal.get_runtime_context().get_node_id()}
h = shoal.get_actor("shared", namespace="team")
out["where"] = shoal.get(h.where.remote(), timeout=60)
out["counts"] = [shoal.get(h.inc.remote(), timeout=60)]
try:
    Counter.options(name="shared", namespace="team").remote()
    out["again"] = "created"
except ValueError as e:
    out["again"] = "ValueError: " + str(e)
same = Counter.options(name="shared", namespace="team", get_if_exists=True).remote()
out["counts"].append(shoal.get(same.inc.remote(), timeout=60))
try:
    shoal.get_actor("nobody", namespace="team")
    out["missing"] = "found"
except ValueError as e:
    out["missing"] = "ValueError: " + str(e)
emit(out)
shoal.shutdown()
'''


@shoal.remote(num_cpus=0)
class Racer:
    """Creates named Counters with get_if_exists at the same moment as a
    Racer on another node (both wait for one ``go`` file first)."""

    def race(self, names, go):
        assert wait_for_file(go)
        counts = []
        for name in names:
            c = Counter.options(name=name, namespace="race", get_if_exists=True).remote()
            counts.append(shoal.get(c.inc.remote(), timeout=60))
        return counts


@pytest.mark.timeout(90)
def test_get_if_exists_racing_on_two_nodes_makes_one_actor(cluster, driver, tmp_path):
    """Two processes on different nodes create the same named actors with
    get_if_exists at once: each name gets one actor that both use (the loser
    of the head's directory borrows the winner's, even before the winner
    has submitted the creation)."""
    cluster.add("b")
    driver()
    cluster.wait_linked()
    racers = [Racer.options(**on("head")).remote(), Racer.options(**on("b")).remote()]
    names = [f"n{i}" for i in range(20)]
    go = str(tmp_path / "go")
    refs = [r.race.remote(names, go) for r in racers]
    touch(go)
    counts = shoal.get(refs, timeout=80)
    assert [sorted(pair) for pair in zip(*counts)] == [[1, 2]] * len(names), counts


@pytest.mark.heavy
@pytest.mark.timeout(90)
def test_a_named_actor_on_another_node_is_found_by_every_driver(cluster, driver, spawn,
                                                                tmp_path):
    b = cluster.add("b", resources={"edge": 1})
    driver()
    cluster.wait_linked()
    named = Counter.options(name="shared", namespace="team", resources={"edge": 1}).remote()
    assert shoal.get([named.where.remote(), named.inc.remote()], timeout=GET_TIMEOUT) == [b, 1]

    # a second driver on this machine (the head's node) and one on another
    # machine (a node of its own), at once
    drivers = [spawn(NAMED, here_env(), address="auto"),
               spawn(NAMED, elsewhere_env(tmp_path), address=cluster.address)]
    (here,), (there,) = [d.finish() for d in drivers]
    assert here["me"] == cluster.ids["head"]
    assert there["me"] not in cluster.ids.values()
    counts = []
    for out in (here, there):
        assert out["where"] == b
        assert out["again"].startswith("ValueError") and "shared" in out["again"], out
        assert out["missing"].startswith("ValueError") and "nobody" in out["missing"], out
        assert out["counts"][0] < out["counts"][1]
        counts += out["counts"]
    assert sorted(counts) == [2, 3, 4, 5]

    # and here, the same rules
    with pytest.raises(ValueError):
        Counter.options(name="shared", namespace="team").remote()
    same = Counter.options(name="shared", namespace="team", get_if_exists=True).remote()
    assert shoal.get(same.inc.remote(), timeout=GET_TIMEOUT) == 6
    assert shoal.get(shoal.get_actor("shared", namespace="team").inc.remote(),
                     timeout=GET_TIMEOUT) == 7
    with pytest.raises(ValueError):
        shoal.get_actor("shared", namespace="elsewhere")

    shoal.kill(named)
    with pytest.raises(ActorDiedError):
        shoal.get(same.inc.remote(), timeout=GET_TIMEOUT)

    def name_free():
        try:
            shoal.get_actor("shared", namespace="team")
        except ValueError:
            return True
        return False
    wait_for(name_free, timeout=15, what="the killed actor's name to be released")
    reborn = Counter.options(name="shared", namespace="team", resources={"edge": 1}).remote()
    assert shoal.get([reborn.where.remote(), reborn.inc.remote()], timeout=GET_TIMEOUT) \
        == [b, 1]
    # another driver sees the new one
    (there,) = spawn(NAMED, elsewhere_env(tmp_path), address=cluster.address).finish()
    assert there["where"] == b and there["counts"] == [2, 3]


# --------------------------------------------------------- placement groups
def placed(pg) -> list[str]:
    """The node id of each bundle of a ready group."""
    table = placement_group_table(pg)
    assert table["state"] == "CREATED", table
    nodes = table["bundles_to_node_id"]
    return [nodes[i] for i in range(len(nodes))]


def runs_in_bundles(pg, n: int) -> list[str]:
    return shoal.get([where.options(**in_bundle(pg, i)).remote() for i in range(n)],
                     timeout=GET_TIMEOUT)


@pytest.fixture
def pg_cluster(cluster, driver):
    """head 1 CPU, b 2 CPUs, c 2 CPUs, linked, driver connected."""
    cluster.add("b", num_cpus=2)
    cluster.add("c", num_cpus=2)
    driver()
    cluster.wait_linked()
    return cluster


def settled(cpus: float) -> None:
    """Until this node's view of the cluster (what it plans groups with, as
    last heard through the head) shows ``cpus`` CPUs free."""
    wait_for(lambda: shoal.available_resources().get("CPU", 0) == cpus, timeout=15,
             interval=0.05, what=f"the driver's node to see {cpus:g} CPUs free")


@pytest.mark.timeout(60)
def test_placement_group_strategies_across_nodes(pg_cluster):
    ids = pg_cluster.ids
    everyone = {ids["head"], ids["b"], ids["c"]}
    two = {ids["b"], ids["c"]}                  # the nodes with 2 CPUs
    cases = [("STRICT_SPREAD", 3), ("SPREAD", 3), ("STRICT_PACK", 2), ("PACK", 2)]
    for strategy, n in cases:
        # each group on an idle cluster (a group made right after another was
        # removed: the test below)
        settled(5)
        pg = placement_group([{"CPU": 1}] * n, strategy=strategy)
        assert pg.wait(GET_TIMEOUT), strategy
        nodes = placed(pg)
        if "SPREAD" in strategy:       # SPREAD: a node again only when no other fits
            assert set(nodes) == everyone, (strategy, nodes)
        else:
            assert len(set(nodes)) == 1 and nodes[0] in two, (strategy, nodes)
        assert runs_in_bundles(pg, n) == nodes, strategy
        remove_placement_group(pg)


@pytest.mark.timeout(60)
def test_a_pack_group_made_right_after_a_removal_uses_the_freed_node(pg_cluster):
    ids = pg_cluster.ids
    hold = placement_group([{"CPU": 1, "at_c": 0.5}], strategy="STRICT_PACK")
    assert hold.wait(GET_TIMEOUT) and placed(hold) == [ids["c"]]
    settled(4)
    first = placement_group([{"CPU": 1}] * 2, strategy="STRICT_PACK")   # only b has 2 free
    assert first.wait(GET_TIMEOUT) and placed(first) == [ids["b"]] * 2
    remove_placement_group(first)
    # b's two CPUs are free again (and the head's node freed them itself)
    pg = placement_group([{"CPU": 1}] * 2, strategy="PACK")
    assert pg.wait(GET_TIMEOUT)
    assert placed(pg) == [ids["b"]] * 2, [pg_cluster.name_of(n) for n in placed(pg)]
    assert runs_in_bundles(pg, 2) == [ids["b"]] * 2


@pytest.mark.timeout(60)
def test_an_infeasible_strict_spread_waits_for_a_fourth_node(pg_cluster, capfd):
    pg = placement_group([{"CPU": 1}] * 4, strategy="STRICT_SPREAD")
    ready, _ = shoal.wait([pg.ready()], timeout=1.0)
    assert ready == []
    assert placement_group_table(pg)["state"] != "CREATED"
    seen = {"err": ""}

    def warned():
        seen["err"] += capfd.readouterr().err
        return "cannot be placed yet" in seen["err"]
    wait_for(warned, timeout=20, what="the driver to be warned")
    assert "STRICT_SPREAD puts each of its 4 bundles on a different node" in seen["err"]
    d = pg_cluster.add("d")
    assert pg.wait(GET_TIMEOUT)
    nodes = placed(pg)
    assert set(nodes) == set(pg_cluster.ids.values()) and d in nodes
    assert runs_in_bundles(pg, 4) == nodes


@pytest.mark.timeout(60)
def test_removing_a_group_kills_its_actor_on_another_node_and_frees_the_resources(pg_cluster,
                                                                               tmp_path):
    ids = pg_cluster.ids
    pg = placement_group([{"CPU": 2}], strategy="STRICT_PACK")   # only b or c can hold it
    assert pg.wait(GET_TIMEOUT)
    (home,) = placed(pg)
    assert home in (ids["b"], ids["c"])
    actor = Counter.options(num_cpus=1, **in_bundle(pg, 0)).remote()
    assert shoal.get([actor.where.remote(), actor.inc.remote()], timeout=GET_TIMEOUT) \
        == [home, 1]
    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    call = actor.gate.remote(str(started), str(release))
    wait_for(lambda: started_on(started) == [home], timeout=30, what="the call to start")

    remove_placement_group(pg)
    with pytest.raises(ActorDiedError):
        shoal.get(call, timeout=GET_TIMEOUT)
    with pytest.raises(ActorDiedError):
        shoal.get(actor.inc.remote(), timeout=GET_TIMEOUT)
    # every CPU of b and c is free again: a group needing all of them is placed
    whole = placement_group([{"CPU": 2}] * 2, strategy="STRICT_SPREAD")
    assert whole.wait(GET_TIMEOUT)
    assert set(placed(whole)) == {ids["b"], ids["c"]}
    assert runs_in_bundles(whole, 2) == placed(whole)
    remove_placement_group(whole)


# ------------------------------------------------- a driver without a node
ELSEWHERE = '''
import io, numpy as np
shoal.init(address=ARGS["address"])
out = {"me": shoal.get_runtime_context().get_node_id()}

@shoal.remote
def square(x):
    return node_id(), x * x

@shoal.remote(resources={"edge": 1})
def checksum(a):
    return node_id(), float(a.sum()), a.nbytes

@shoal.remote(resources={"edge": 1})
def produce(seed):
    return np.random.default_rng(seed).random(ARGS["big"])

@shoal.remote(resources={"edge": 1})
def chatty(token):
    print(f"{token} printed on {node_id()}")
    return os.getpid()

squares = shoal.get([square.remote(i) for i in range(8)], timeout=60)
out["squares"] = [s for _, s in squares]
out["square_nodes"] = sorted({w for w, _ in squares})
c = Counter.options(resources={"edge": 1}).remote()
out["actor"] = shoal.get([c.where.remote(), c.inc.remote(), c.inc.remote()], timeout=60)
data = np.random.default_rng(7).random(ARGS["big"])
out["put"] = list(shoal.get(checksum.remote(shoal.put(data)), timeout=60)) + [float(data.sum())]
back = shoal.get(produce.remote(8), timeout=60)
expected = np.random.default_rng(8).random(ARGS["big"])
out["result"] = [back.nbytes, bool(np.array_equal(back, expected))]

@shoal.remote(num_returns="streaming")
def stream():
    yield 1

try:                       # runs on the submitting node, and this one runs nothing
    shoal.get(next(iter(stream.remote())), timeout=30)
    out["streaming"] = None
except Exception as e:
    out["streaming"] = [type(e).__name__, str(e)]

real = sys.stdout
sys.stdout = seen = io.StringIO()
pid = shoal.get(chatty.remote(ARGS["token"]), timeout=60)
deadline = time.monotonic() + 30          # output travels apart from the result
while ARGS["token"] not in seen.getvalue() and time.monotonic() < deadline:
    time.sleep(0.01)
sys.stdout = real
out["chatty_pid"] = pid
out["output"] = seen.getvalue()
emit(out)
open(ARGS["ready"], "w").close()
assert wait_for_file(ARGS["go"])           # the test reads `shoal status` meanwhile
shoal.shutdown()
'''

WRONG_TOKEN = '''
import psutil
from shoal.cluster.auth import AuthError
try:
    shoal.init(address=ARGS["address"])
    emit({"error": None})
except (AuthError, ConnectionError) as e:
    emit({"error": type(e).__name__, "message": str(e),
          "initialized": shoal.is_initialized(),
          "children": [p.pid for p in psutil.Process().children(recursive=True)]})
'''


@pytest.mark.heavy
@pytest.mark.timeout(90)
def test_a_driver_on_a_machine_without_a_node(cluster, spawn, tmp_path):
    b = cluster.add("b", resources={"edge": 2})     # the driver's actor keeps one
    ready, go = tmp_path / "ready", tmp_path / "go"
    token = "elsewhere-" + os.urandom(4).hex()
    d = spawn(ELSEWHERE, elsewhere_env(tmp_path), address=cluster.address, big=BIG,
              token=token, ready=str(ready), go=str(go))
    wait_for(lambda: ready.exists() or d.proc.poll() is not None, timeout=80,
             what="the driver to finish its work")
    assert ready.exists(), d.proc.communicate()
    # while it runs, `shoal status` lists its node (and only as a driver)
    s = launch.status()
    status = launch.format_status(s)
    listed = [n for n in s["nodes"] if n.get("driver")]
    assert [n["pid"] for n in listed] == [d.proc.pid], listed
    me = listed[0]["node_id"]
    assert "drivers connected from machines without a node:" in status
    drivers_part = status.split("drivers connected from machines without a node:")[1]
    assert f"{me[:12]} " in drivers_part and f"pid={d.proc.pid}" in drivers_part
    assert "1 node(s) alive" not in status and "2 node(s) alive, 0 dead" in status
    touch(str(go))
    (out,) = d.finish()
    assert out["me"] == me and me not in cluster.ids.values()
    assert out["squares"] == [i * i for i in range(8)]
    assert set(out["square_nodes"]) <= set(cluster.ids.values())
    assert out["actor"] == [b, 1, 2]
    data = big_array(7)
    assert out["put"] == [b, float(data.sum()), data.nbytes, float(data.sum())]
    assert out["result"] == [20 * 1024 * 1024, True]
    assert out["streaming"][0] == "TaskUnschedulableError"
    assert "machine without a node" in out["streaming"][1]
    line = next(x for x in out["output"].splitlines() if f"{token} printed on" in x)
    assert f"(chatty pid={out['chatty_pid']})" in line and line.endswith(f"printed on {b}")

    # once the head notices the driver left, `shoal status` stops listing it
    def gone():
        text = launch.format_status(launch.status())
        return f"pid={d.proc.pid}" not in text and me[:12] not in text
    wait_for(gone, timeout=20, interval=0.05, what="the head to drop the driver's node")

    # a wrong token: a clear error, nothing left running, nothing joined
    before = {n["node_id"] for n in launch.status()["nodes"]}
    bad = spawn(WRONG_TOKEN, elsewhere_env(tmp_path, token="0" * 64), address=cluster.address)
    (out,) = bad.finish(timeout=60)
    assert out["error"] in ("AuthError", "ConnectionError"), out
    assert "token" in out["message"].lower(), out
    assert out["initialized"] is False and out["children"] == [], out
    assert {n["node_id"] for n in launch.status()["nodes"]} == before


# ------------------------------------------------- resources nobody has yet
@pytest.mark.timeout(60)
def test_a_task_needing_a_resource_no_node_has_waits_for_a_node_that_has_it(cluster, driver,
                                                                          capfd):
    cluster.add("b")
    driver()

    @shoal.remote(resources={"accelerator": 1})
    def needs_it():
        return node_id()

    ref = needs_it.remote()
    seen = {"err": ""}

    def warned():
        seen["err"] += capfd.readouterr().err
        return "needs_it cannot be scheduled on any node" in seen["err"]
    wait_for(warned, timeout=20, what="the driver to be warned")
    assert "accelerator" in seen["err"], seen["err"]
    ready, _ = shoal.wait([ref], timeout=1.0)
    assert ready == []                      # waiting, not failed
    late = cluster.add("late", resources={"accelerator": 1})
    assert shoal.get(ref, timeout=GET_TIMEOUT) == late


# ------------------------------------------------------------ head restarts
FIND = '''
shoal.init(address=ARGS["address"])
h = shoal.get_actor("keeper", namespace="team")
emit([shoal.get(h.where.remote(), timeout=60), shoal.get(h.inc.remote(), timeout=60)])
shoal.shutdown()
'''


@pytest.mark.heavy
@pytest.mark.timeout(90)
def test_work_goes_on_while_the_head_restarts_and_named_actors_survive_it(
        cluster, driver, spawn, tmp_path, cluster_env):
    """Links between nodes do not go through the head: calls to an actor on
    another node go on while the head is down; the restarted head recovers
    its directory from its database, so another driver finds the actor."""
    b = cluster.add("b", resources={"edge": 1})
    driver()
    keeper = Counter.options(name="keeper", namespace="team", lifetime="detached",
                             resources={"edge": 1}).remote()
    assert shoal.get(keeper.where.remote(), timeout=GET_TIMEOUT) == b
    head = psutil.Process(launch.status()["head"]["pid"])
    head.send_signal(signal.SIGKILL)
    head.wait(10)
    assert shoal.get([keeper.inc.remote() for _ in range(3)], timeout=GET_TIMEOUT) == [1, 2, 3]
    port = cluster.address.rsplit(":", 1)[1]
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cluster.head", "--host", "127.0.0.1",
                             "--port", port, "--token-file", cluster_env.token_path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    cluster_env.record_process("head", proc.pid)

    def both_back():
        try:
            s = launch.status()
        except Exception:
            return False
        return {n["node_id"] for n in s["nodes"] if n["state"] == "ALIVE"} >= set(
            cluster.ids.values())
    wait_for(both_back, timeout=30, what="the nodes to reconnect to the restarted head")
    (found,) = spawn(FIND, here_env(), address="auto").finish()
    assert found == [b, 4]
    shoal.kill(keeper)


@pytest.mark.timeout(60)
def test_a_strict_spread_group_made_as_a_node_joins_spreads(cluster, driver):
    """The group is made while the driver's node sees node b but has no link
    to it yet (b is stopped as soon as it has joined): it waits for the link
    rather than putting both bundles on the head's node."""
    b = cluster.add("b")
    os.kill(cluster.pids["b"], signal.SIGSTOP)
    try:
        driver()
        wait_for(lambda: b in {n["NodeID"] for n in shoal.nodes() if n["Alive"]}, timeout=30,
                 what="the driver's node to see b")
        # (both bundles would fit on the head's node)
        pg = placement_group([{"CPU": 0.5}, {"CPU": 0.5}], strategy="STRICT_SPREAD")
        pg.wait(1)
    finally:
        os.kill(cluster.pids["b"], signal.SIGCONT)
    assert pg.wait(GET_TIMEOUT)
    assert sorted(placed(pg)) == sorted([cluster.ids["head"], b])
