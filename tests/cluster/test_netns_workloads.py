"""Workloads on a cluster of machines made of network namespaces: each node
on an address of its own (10.231.X.Y on a bridge, tests/cluster/netns.py),
a head and node agents as real processes, and driver programs run inside a
namespace with ``ip netns exec`` that join with ``shoal.init(address=
"IP:PORT")``, SHOAL_TOKEN and a state directory of their own (so each gets
a node of its own that runs nothing, as on a machine without an agent).

Map-reduce and actors spread over the machines, a machine killed and a
machine's cable pulled mid-run (it is declared dead, the work finishes
elsewhere, and once plugged back it rejoins under a new node id), and the
README's `shoal start` flow. Tasks report where they ran (SHOAL_NODE_ID,
or their namespace's address where a node id would be ambiguous); the
driver hands its results back as JSON files; the tests assert results and
places, never times, and every wait polls a condition with a deadline.
Also: soft node affinity to a machine that died moves on, and tasks on a
rejoined machine report its new node id.
Everything listens only inside the namespaces, which are removed after
each test with every process started (by pid and process group).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ..conftest import touch, wait_for
from .netns import Fabric, NetCluster, Procs, requires_netns

pytestmark = requires_netns


@pytest.fixture
def make_cluster(tmp_path):
    """``make_cluster(["a", "b", ...])``: machines with those names (no
    processes yet). Afterwards every process is killed and every namespace
    removed, and the test fails if any is left."""
    made = []

    def make(names) -> NetCluster:
        procs = Procs()
        made.append((procs, None, None))
        fabric = Fabric(names)
        cluster = NetCluster(fabric, procs, tmp_path)
        made[-1] = (procs, fabric, cluster)
        return cluster

    try:
        yield make
    finally:
        problems = []
        for procs, fabric, cluster in made:
            if cluster is not None:
                cluster.dump_logs()        # shown only when the test fails
            left = procs.close()
            if left:
                problems.append(f"processes left running: {left}")
            if fabric is not None:
                ns_left = fabric.close()
                if ns_left:
                    problems.append(f"namespaces left: {ns_left}")
        assert not problems, problems


def gate_markers(started, nid: str) -> list[str]:
    return [n for n in os.listdir(started) if n.split("-")[1] == nid]


# --------------------------------------------------------------- map-reduce
MAP_REDUCE = '''
N = ARGS["n"]
wait_linked(["a", "b"])

@shoal.remote(num_returns=2)
def mapper(i):
    return node_id(), np.arange(N, dtype=np.int64) * (i + 1)

@shoal.remote
def reducer(*parts):
    total = np.zeros(N, dtype=np.int64)
    for p in parts:
        total += p
    return node_id(), int(total.sum()), total[:3].tolist(), [int(p[-1]) for p in parts]

kinds = [{"resources": {"at_a": 1}}, {"resources": {"b": 1}},
         {"scheduling_strategy": "SPREAD"}]
places, parts = [], []
for i in range(ARGS["maps"]):
    where_ref, part = mapper.options(**kinds[i % 3]).remote(i)
    places.append(where_ref)
    parts.append(part)
reduce_node, total, head, lasts = shoal.get(reducer.remote(*parts), timeout=90)
emit("result", {"places": shoal.get(places, timeout=60), "reduce_node": reduce_node,
                "total": total, "head": head, "lasts": lasts,
                "driver": shoal.get_runtime_context().get_node_id()})
'''


@pytest.mark.timeout(120)
def test_map_reduce_spreads_over_two_machines(make_cluster):
    """24 maps of 3.2 MB each (a third pinned to a, a third to b by b's own
    resource, a third SPREAD) and one reduce over all of them, from a
    driver on a: exact sums, every output in order, both machines ran
    maps, the driver's own node none."""
    c = make_cluster(["a", "b"])
    c.start_head("a", num_cpus=2).add_node("b", num_cpus=2, resources={"b": 100})
    ids = c.wait_alive()
    n, maps = 400_000, 24                      # 3.2 MB of int64 per map output
    d = c.driver("a", MAP_REDUCE, n=n, maps=maps)
    r = d.result("result", timeout=100)
    d.finish()
    base = n * (n - 1) // 2
    assert r["total"] == base * sum(range(1, maps + 1))
    assert r["head"] == [0, sum(range(1, maps + 1)), 2 * sum(range(1, maps + 1))]
    assert r["lasts"] == [(n - 1) * (i + 1) for i in range(maps)]
    places = r["places"]
    assert [places[i] for i in range(0, maps, 3)] == [ids["a"]] * (maps // 3)
    assert [places[i] for i in range(1, maps, 3)] == [ids["b"]] * (maps // 3)
    assert set(places) == {ids["a"], ids["b"]}            # the driver's node ran nothing
    assert r["reduce_node"] in (ids["a"], ids["b"])
    assert r["driver"] not in places


# ------------------------------------------------------------------- actors
ACTORS = '''
wait_linked(["a", "b"])

@shoal.remote(resources={"b": 1})
class Log:
    def __init__(self, name):
        self.name, self.items = name, []
    def add(self, src, x):
        self.items.append([src, x])
        return len(self.items)
    def where(self):
        return node_id()
    def items_(self):
        return self.items
    def total(self, arr):          # a borrowed array, fetched from where it was made
        return int(arr.sum())
    def relay(self, other, x):     # a call to another actor from inside an actor
        return shoal.get(other.add.remote(self.name, x), timeout=60)

@shoal.remote(resources={"at_a": 1})
def caller(logs, n):
    """On machine a: calls both actors through the handles it was passed."""
    out = []
    for i in range(n):
        out.append(shoal.get([h.add.remote("task", i) for h in logs], timeout=60))
    return node_id(), out

@shoal.remote(resources={"at_a": 1})
def make_array(k):
    return np.full(500_000, k, dtype=np.int64)

logs = [Log.remote("x"), Log.remote("y")]
places = shoal.get([h.where.remote() for h in logs], timeout=60)
from_driver = [[h.add.remote("driver", i) for i in range(5)] for h in logs]
from_driver = [shoal.get(refs, timeout=60) for refs in from_driver]
task_node, from_task = shoal.get(caller.remote(logs, 5), timeout=60)
relayed = shoal.get(logs[0].relay.remote(logs[1], 99), timeout=60)
totals = shoal.get([logs[1].total.remote(make_array.remote(k)) for k in (1, 2, 3)], timeout=60)
items = shoal.get([h.items_.remote() for h in logs], timeout=60)
emit("result", {"places": places, "from_driver": from_driver, "task_node": task_node,
                "from_task": from_task, "relayed": relayed, "totals": totals,
                "items": items})
'''


@pytest.mark.timeout(120)
def test_actors_on_one_machine_called_from_the_driver_and_from_tasks_on_another(make_cluster):
    """Two actors that need b's resource live on b; the driver (on a) calls
    them, then a task on a calls them through handles passed as arguments,
    one actor calls the other, and one sums arrays made on a: every reply
    right and each actor's log in submission order."""
    c = make_cluster(["a", "b"])
    c.start_head("a", num_cpus=2).add_node("b", num_cpus=2, resources={"b": 100})
    ids = c.wait_alive()
    d = c.driver("a", ACTORS)
    r = d.result("result", timeout=100)
    d.finish()
    assert r["places"] == [ids["b"], ids["b"]]
    assert r["from_driver"] == [[1, 2, 3, 4, 5]] * 2
    assert r["task_node"] == ids["a"]
    assert r["from_task"] == [[6 + i, 6 + i] for i in range(5)]
    assert r["relayed"] == 11
    assert r["totals"] == [k * 500_000 for k in (1, 2, 3)]
    calls = [["driver", i] for i in range(5)] + [["task", i] for i in range(5)]
    assert r["items"] == [calls, calls + [["x", 99]]]


# --------------------------------------------------------- a machine killed
KILLED = '''
N = ARGS["n"]
ids = ARGS["ids"]
wait_linked(["a", "b"])

@shoal.remote(num_returns=2, max_retries=3)
def mapper(i, started=None, release=None):
    if started is not None:
        hold(f"m{i}", started, release)
    return node_id(), np.arange(N, dtype=np.int64) * (i + 1)

@shoal.remote(max_retries=3)
def reducer(*parts):
    total = np.zeros(N, dtype=np.int64)
    for p in parts:
        total += p
    return int(total.sum()), [int(p[-1]) for p in parts]

@shoal.remote(resources={"w": 1}, max_restarts=1, max_task_retries=1)
class Counter:
    def __init__(self):
        self.n = 0
    def add(self):
        self.n += 1
        return self.n
    def where(self):
        return node_id()
    def gate(self, started, release):
        hold("actor", started, release)
        return node_id()

# phase 1, before c joins: maps that finish, those needing w on b (their
# outputs live there and die with it), and the actor on b (the only w)
first = [mapper.options(**({"resources": {"w": 1}} if i % 2 else
                           {"scheduling_strategy": "SPREAD"})).remote(i)
         for i in range(ARGS["first"])]
first_places = shoal.get([w for w, _ in first], timeout=60)
counter = Counter.remote()
before = shoal.get([counter.where.remote(), counter.add.remote(), counter.add.remote()],
                   timeout=60)
emit("phase1", {"first_places": first_places, "before": before})
# phase 2, with c (w too) in the cluster: maps needing w (b or c) that wait
# while b is killed, and an actor call that waits on b
assert wait_for_file(ARGS["c_up"])
ids.update(json.load(open(ARGS["c_up"])))
wait_linked(["a", "b", "c"])
second = [mapper.options(resources={"w": 1}, scheduling_strategy="SPREAD").remote(
              i, ARGS["started"], ARGS["release"])
          for i in range(ARGS["first"], ARGS["first"] + ARGS["second"])]
gated = counter.gate.remote(ARGS["started"], ARGS["release"])
parts = [p for _, p in first + second]
total, lasts = shoal.get(reducer.remote(*parts), timeout=90)
emit("result", {"total": total, "lasts": lasts,
                "second_places": shoal.get([w for w, _ in second], timeout=60),
                "gated": shoal.get(gated, timeout=60),
                "after": shoal.get([counter.where.remote(), counter.add.remote()], timeout=60)})
'''


@pytest.mark.heavy
@pytest.mark.timeout(150)
def test_a_machine_killed_mid_map_reduce_the_work_finishes_on_the_others(make_cluster,
                                                                        tmp_path):
    """Machine b is SIGKILLed (agent and workers) while maps run there and
    while it holds finished map outputs and a restartable actor: the maps
    are retried on c, the lost outputs rebuilt from lineage, the actor
    restarted on c (which also has ``w``) with its in-flight call retried."""
    c = make_cluster(["a", "b", "c", "d"])
    c.start_head("a", num_cpus=2).add_node("b", num_cpus=2, resources={"w": 10})
    ids = c.wait_alive()
    started, release, c_up = tmp_path / "started", tmp_path / "release", tmp_path / "c_up"
    started.mkdir()
    n, first, second = 200_000, 12, 9          # 1.6 MB per map output
    d = c.driver("d", KILLED, n=n, first=first, second=second, started=str(started),
                 release=str(release), c_up=str(c_up))
    p1 = d.result("phase1", timeout=100)
    assert p1["before"] == [ids["b"], 1, 2]
    assert [p1["first_places"][i] for i in range(1, first, 2)] == [ids["b"]] * (first // 2)
    c.add_node("c", num_cpus=2, resources={"w": 10})
    ids = c.wait_alive()
    (tmp_path / "c_up.tmp").write_text(json.dumps({"c": ids["c"]}))
    os.replace(tmp_path / "c_up.tmp", c_up)
    wait_for(lambda: {m[0] for m in gate_markers(started, ids["b"])} == {"m", "a"},
             timeout=60, interval=0.05, what="maps and the actor's call to run on b")
    c.kill_node("b")
    touch(str(release))
    r = d.result("result", timeout=120)
    d.finish()
    maps = first + second
    assert r["total"] == n * (n - 1) // 2 * sum(range(1, maps + 1))
    assert r["lasts"] == [(n - 1) * (i + 1) for i in range(maps)]
    assert set(r["second_places"]) == {ids["c"]}   # only c has w once b is gone
    assert r["gated"] == ids["c"]                  # retried on the restarted actor
    assert r["after"] == [ids["c"], 1]             # restarted on c, with fresh state
    assert [row["node_id"] for row in c.rows("b", "DEAD")] == [ids["b"]]


SOFT_AFFINITY = '''
from shoal.util.scheduling_strategies import NodeAffinitySchedulingStrategy
wait_linked(["a", "b"])
on_b = NodeAffinitySchedulingStrategy(node_id=ARGS["ids"]["b"], soft=True)

@shoal.remote(max_retries=3)
def gated(started, release):
    hold("m", started, release)
    return node_id()

@shoal.remote(max_restarts=1, max_task_retries=1)
class Where:
    def where(self):
        return node_id()

task = gated.options(scheduling_strategy=on_b).remote(ARGS["started"], ARGS["release"])
actor = Where.options(scheduling_strategy=on_b).remote()
before = shoal.get(actor.where.remote(), timeout=60)
touch(os.path.join(ARGS["started"], f"actor-{before}-0"))
assert wait_for_file(ARGS["killed"])
call = actor.where.remote()
ready, _ = shoal.wait([task, call], num_returns=2, timeout=15)
emit("result", {"before": before, "task": shoal.get(task) if task in ready else None,
                "actor": shoal.get(call) if call in ready else None})
'''


@pytest.mark.heavy
@pytest.mark.timeout(90)
def test_soft_affinity_work_moves_on_when_its_machine_dies(make_cluster, tmp_path):
    c = make_cluster(["a", "b", "d"])
    c.start_head("a", num_cpus=2).add_node("b", num_cpus=2)
    ids = c.wait_alive()
    started, release, killed = tmp_path / "started", tmp_path / "release", tmp_path / "killed"
    started.mkdir()
    d = c.driver("d", SOFT_AFFINITY, started=str(started), release=str(release),
                 killed=str(killed))
    wait_for(lambda: {m[0] for m in gate_markers(started, ids["b"])} == {"m", "a"},
             timeout=60, interval=0.05, what="the task and the actor to run on b")
    c.kill_node("b")
    touch(str(release))
    touch(str(killed))
    r = d.result("result", timeout=60)
    d.finish()
    assert r == {"before": ids["b"], "task": ids["a"], "actor": ids["a"]}


# -------------------------------------------------------- a machine cut off
CUT = '''
N = ARGS["n"]
wait_linked(["a", "b"])

@shoal.remote(num_returns=2, max_retries=3)
def mapper(i, started=None, release=None):
    if started is not None:
        hold(f"m{i}", started, release)
    return machine(), np.arange(N, dtype=np.int64) * (i + 1)

@shoal.remote(max_retries=3)
def reducer(*parts):
    return int(sum(int(p.sum()) for p in parts))

@shoal.remote(resources={"at_b": 1})
def on_b():
    return machine()

def map_reduce(count, **gate):
    refs = [mapper.options(scheduling_strategy="SPREAD").remote(i, **gate)
            for i in range(count)]
    total = shoal.get(reducer.remote(*[p for _, p in refs]), timeout=90)
    return total, shoal.get([w for w, _ in refs], timeout=60)

# phase 1: b's cable is pulled while maps wait there
total, places = map_reduce(ARGS["maps"], started=ARGS["started"], release=ARGS["release"])
emit("phase1", {"total": total, "places": places})
# phase 2: b is back, under a new node id
assert wait_for_file(ARGS["rejoined"])
on_b = shoal.get([on_b.remote() for _ in range(4)], timeout=60)
total, places = map_reduce(8)
emit("phase2", {"on_b": on_b, "total": total, "places": places})
'''


def cut_and_rejoin(c, tmp_path, old_b: str) -> str:
    """Pull b's cable, wait until the head declares b dead, plug it back,
    wait until b rejoins; returns its new node id."""
    c.fabric.link("b", False)
    try:
        wait_for(lambda: [r["node_id"] for r in c.rows("b", "DEAD")] == [old_b],
                 timeout=30, interval=0.1, what="the head to declare b dead")
    finally:
        c.fabric.link("b", True)
    new = wait_for(lambda: [r["node_id"] for r in c.rows("b", "ALIVE")], timeout=30,
                   interval=0.1, what="b to rejoin")
    assert len(new) == 1 and new[0] != old_b
    assert [r["node_id"] for r in c.rows("b", "DEAD")] == [old_b]     # fenced for good
    assert f"dead; rejoining as {new[0][:12]}" in (tmp_path / "node-b.log").read_text()
    return new[0]


@pytest.mark.heavy
@pytest.mark.timeout(150)
def test_a_machine_cut_off_mid_run_is_fenced_and_rejoins_under_a_new_id(make_cluster,
                                                                       tmp_path):
    """Machine b's veth goes down while maps run there: the head declares b
    dead, the maps are retried on a and the run's result is right; with
    the cable back, b is fenced (its old id stays DEAD) and rejoins as a
    new node, which the same driver then uses. Where a task ran is told by
    its namespace's address (``machine()``)."""
    c = make_cluster(["a", "b"])
    c.start_head("a", num_cpus=2).add_node("b", num_cpus=2)
    ids = c.wait_alive()
    ip_a, ip_b = c.fabric.ip["a"], c.fabric.ip["b"]
    started, release = tmp_path / "started", tmp_path / "release"
    rejoined = tmp_path / "rejoined"
    started.mkdir()
    n, maps = 200_000, 8
    expect = n * (n - 1) // 2
    d = c.driver("a", CUT, n=n, maps=maps, started=str(started), release=str(release),
                 rejoined=str(rejoined))
    wait_for(lambda: gate_markers(started, ids["b"]), timeout=60, interval=0.05,
             what="maps to run on b")
    c.fabric.link("b", False)
    try:
        wait_for(lambda: [r["node_id"] for r in c.rows("b", "DEAD")] == [ids["b"]],
                 timeout=30, interval=0.1, what="the head to declare b dead")
        touch(str(release))
        p1 = d.result("phase1", timeout=100)
    finally:
        c.fabric.link("b", True)
    assert p1["total"] == expect * sum(range(1, maps + 1))
    assert set(p1["places"]) == {ip_a}        # b's maps were retried on a
    new = wait_for(lambda: [r["node_id"] for r in c.rows("b", "ALIVE")], timeout=30,
                   interval=0.1, what="b to rejoin")
    assert len(new) == 1 and new[0] != ids["b"]
    assert [r["node_id"] for r in c.rows("b", "DEAD")] == [ids["b"]]     # fenced for good
    assert f"dead; rejoining as {new[0][:12]}" in (tmp_path / "node-b.log").read_text()
    touch(str(rejoined))
    p2 = d.result("phase2", timeout=100)
    d.finish()
    assert p2["on_b"] == [ip_b] * 4
    assert p2["total"] == expect * sum(range(1, 9))
    assert set(p2["places"]) <= {ip_a, ip_b}
    assert [r["node_id"] for r in c.rows("b", "ALIVE")] == new


REJOINED_ID = '''
wait_linked(["a", "b"])
emit("linked", True)
assert wait_for_file(ARGS["rejoined"])

@shoal.remote(resources={"at_b": 1})
def ids_on_b():
    return node_id(), shoal.get_runtime_context().get_node_id()

emit("result", shoal.get([ids_on_b.remote() for _ in range(3)], timeout=60))
'''


@pytest.mark.heavy
@pytest.mark.timeout(90)
def test_tasks_on_a_rejoined_machine_report_its_new_node_id(make_cluster, tmp_path):
    c = make_cluster(["a", "b"])
    c.start_head("a", num_cpus=2).add_node("b", num_cpus=2)
    ids = c.wait_alive()
    rejoined = tmp_path / "rejoined"
    d = c.driver("a", REJOINED_ID, rejoined=str(rejoined))
    d.result("linked", timeout=60)             # b has run work (workers) under its old id
    new = cut_and_rejoin(c, tmp_path, ids["b"])
    touch(str(rejoined))
    r = d.result("result", timeout=60)
    d.finish()
    assert r == [[new, new]] * 3


# ------------------------------------------------------- the README's flow
PROGRAM = '''
@shoal.remote
def square(x):
    return x * x, node_id()

@shoal.remote(resources={"b": 1})
class Greeter:
    def __init__(self, greeting):
        self.greeting = greeting
    def greet(self, name):
        return f"{self.greeting}, {name}", node_id()

squares = shoal.get([square.options(scheduling_strategy="SPREAD").remote(i)
                     for i in range(10)], timeout=60)
g = Greeter.remote("hello")
@shoal.remote
def total_of(a):
    return int(a.sum())

ref = shoal.put(np.arange(1_000_000))
total = shoal.get(total_of.remote(ref), timeout=60)
emit("result", {"squares": [s for s, _ in squares], "ran_on": sorted({w for _, w in squares}),
                "greet": shoal.get(g.greet.remote("world"), timeout=60), "total": total,
                "me": shoal.get_runtime_context().get_node_id()})
shoal.shutdown()
'''


@pytest.mark.timeout(120)
def test_the_readme_flow_shoal_start_on_two_machines_and_drivers_elsewhere(make_cluster,
                                                                           tmp_path):
    """`shoal start --head` on machine a, `shoal start --address` on b with
    a copy of the token file, a driver on d (no node there) that joins with
    address=HEAD and SHOAL_TOKEN, one on b that uses b's node
    (address="auto"), `shoal status` from d, then `shoal stop` on both."""
    c = make_cluster(["a", "b", "d"])
    cli = [sys.executable, "-m", "shoal.cli"]

    def run(where, args, state, token=False):
        return subprocess.run(["ip", "netns", "exec", c.fabric.ns[where], *cli, *args],
                              env=c.env(state, token), capture_output=True, text=True,
                              timeout=60)

    def adopt(state):                  # what `shoal start` launched: ended even on failure
        for pid in json_pids(tmp_path / state):
            c.procs.adopt(pid, "shoal.cluster")

    def start(where, args, state):
        try:
            return run(where, ["start", *args], state)
        finally:
            adopt(state)

    out = start("a", ["--head", "--host", c.fabric.ip["a"], "--port", "0", "--num-cpus", "2"],
                "s-a")
    assert out.returncode == 0, out.stderr
    head = json.loads((tmp_path / "s-a" / "head.json").read_text())
    c.address, c.head_ns = f"{c.fabric.ip['a']}:{head['port']}", c.fabric.ns["a"]
    assert f"shoal head started at {c.address}" in out.stdout
    token_copy = tmp_path / "token-b"
    token_copy.write_bytes((tmp_path / "s-a" / "token").read_bytes())
    os.chmod(token_copy, 0o600)
    c.token, c.token_file = token_copy.read_text().strip(), str(token_copy)
    out = start("b", ["--address", c.address, "--token-file", str(token_copy),
                      "--num-cpus", "2", "--resources", '{"b": 1}'], "s-b")
    assert out.returncode == 0, out.stderr
    agents = {name: c.rows(name, "ALIVE") for name in ("a", "b")}
    assert [len(rows) for rows in agents.values()] == [1, 1]
    ids = {name: rows[0]["node_id"] for name, rows in agents.items()}

    elsewhere = c.driver("d", PROGRAM)                       # a machine with no node
    r = elsewhere.result("result", timeout=90)
    elsewhere.finish()
    assert r["squares"] == [i * i for i in range(10)]
    assert set(r["ran_on"]) <= set(ids.values()) and r["me"] not in ids.values()
    assert r["greet"] == ["hello, world", ids["b"]]
    assert r["total"] == sum(range(1_000_000))

    on_b = c.driver("b", PROGRAM, address="auto", state="s-b")   # b's own node
    r = on_b.result("result", timeout=90)
    on_b.finish()
    assert r["squares"] == [i * i for i in range(10)] and r["me"] == ids["b"]
    assert r["greet"] == ["hello, world", ids["b"]] and r["total"] == sum(range(1_000_000))

    out = run("d", ["status", "--address", c.address, "--token-file", str(token_copy)],
              "s-status")
    assert out.returncode == 0, out.stderr
    assert "2 node(s) alive, 0 dead" in out.stdout
    assert f"{ids['a'][:12]} ALIVE" in out.stdout and f"{ids['b'][:12]} ALIVE" in out.stdout

    pids = [p for state in ("s-a", "s-b") for p in json_pids(tmp_path / state)]
    for where, state in (("b", "s-b"), ("a", "s-a")):
        out = run(where, ["stop"], state)
        assert out.returncode == 0 and out.stdout.startswith("stopped "), out
    wait_for(lambda: not any(alive(p) for p in pids), timeout=20, interval=0.1,
             what="`shoal stop` to end the head and the agents")


def json_pids(state) -> list[int]:
    procs = state / "procs"
    return [int(p.read_text()) for p in procs.glob("*.pid")] if procs.exists() else []


def alive(pid: int) -> bool:
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ------------------------------------------------------- collectives, training
COLLECTIVE = '''
import shoal.collective as col
from shoal.train import DataParallelTrainer, RunConfig, ScalingConfig
wait_linked(["a", "b"])

@shoal.remote(num_cpus=0)
class Member:
    def join(self, rank):
        col.init_collective_group(2, rank, group_name="g", timeout_s=60)
        return col.get_backend("g"), machine()
    def allreduce(self, rank, n):
        x = np.full(n, rank + 1.0)
        col.allreduce(x, group_name="g")
        parts = col.allgather(None, np.array([rank]), group_name="g")
        return float(x.min()), float(x.max()), [int(p[0]) for p in parts]

members = [Member.options(resources={"at_a": 0.01}).remote(),
           Member.options(resources={"at_b": 0.01}).remote()]
joined = shoal.get([m.join.remote(r) for r, m in enumerate(members)], timeout=90)
sums = shoal.get([m.allreduce.remote(r, ARGS["n"]) for r, m in enumerate(members)], timeout=90)

def loop():
    ctx = shoal.train.get_context()
    g = col.allreduce(np.full(1000, float(ctx.get_world_rank() + 1)))
    shoal.train.report({"sum": float(g[0]), "machine": machine(),
                        "world": ctx.get_world_size()})

import shoal.train
result = DataParallelTrainer(
    loop, scaling_config=ScalingConfig(num_workers=2, placement_strategy="STRICT_SPREAD"),
    run_config=RunConfig(name="spread", storage_path=OUT)).fit()
emit("result", {"joined": joined, "sums": sums, "train": result.metrics,
                "ckpt": result.checkpoint is None})
'''


@pytest.mark.timeout(150)
def test_collective_and_training_across_two_machines(make_cluster):
    """Members on machines a and b form a group over the TCP ring (each
    listening on its own machine's address); 4 MB allreduce and allgather
    are right; a DataParallelTrainer spread over both machines trains with
    its collective group across them."""
    c = make_cluster(["a", "b"])
    c.start_head("a", num_cpus=2).add_node("b", num_cpus=2)
    c.wait_alive()
    d = c.driver("a", COLLECTIVE, n=500_000)
    r = d.result("result", timeout=140)
    d.finish()
    (backend_a, ip_a), (backend_b, ip_b) = r["joined"]
    assert backend_a == backend_b == "ring"
    assert ip_a != ip_b
    assert r["sums"] == [[3.0, 3.0, [0, 1]]] * 2
    assert r["train"]["sum"] == 3.0 and r["train"]["world"] == 2
