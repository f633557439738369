"""Cluster benchmarks: shoal against Ray with two or three nodes on one machine.

    python bench/cluster.py [--reps N] [--batches B] [--only ROW ...]
                            [--systems shoal,ray,tcp] [--timeout S]
                            [--markdown FILE] [--json FILE] [--list]
                            [--no-netns] [--wait-quiet S]

Follows bench/run.py (whose subprocess runner and table code it reuses):
every measurement runs in a fresh subprocess (this file with --child), one
per system per batch, alternating the order; each subprocess starts its own
cluster, warms the row up, takes its share of the repetitions and tears the
cluster down. Cells are median [min-max] n=reps; "speedup" is how many times
better shoal is than Ray.

The clusters:
  shoal  launch.start_head("127.0.0.1", 0, num_cpus=1) (head + its 1-CPU node,
         which the driver joins with shoal.init(address="auto")) and
         launch.start_node(address, num_cpus=2, resources=...) per extra node,
         in a private SHOAL_STATE_DIR; default timeouts.
  Ray    ray.cluster_utils.Cluster(initialize_head=True, head_node_args=
         {"num_cpus": 1, ...}), cluster.add_node(num_cpus=2, resources=...),
         ray.init(address=cluster.address); default timeouts.
  raw TCP  (transfer rows only) one socket between two processes:
         sendall of the same bytes from a written buffer, recv_into a buffer
         already touched, the ceiling a transfer could reach.

The "(netns)" row puts the head (and the driver) in one network namespace
and node B in another, joined by a veth pair through a bridge (root and
iproute2 needed; skipped otherwise or with --no-netns). The namespaces are
made and deleted by this driver process, never by the children.

Every process a child starts carries SHOAL_BENCH_CLUSTER_RUN=<id> in its
environment; after each child the driver kills (by pid) any process still
carrying it and reports it, so nothing outlives the run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run as common  # noqa: E402  (bench/run.py: runner, tables, machine line)
from workloads import MB, Workload, measure_n, now, print_result, result  # noqa: E402

SYSTEMS = ("shoal", "ray", "tcp")
LABELS = {"shoal": "shoal", "ray": "Ray", "tcp": "raw TCP"}
RUN_ENV = "SHOAL_BENCH_CLUSTER_RUN"
STORE_BYTES = 2 * 10**9            # Ray's object store per node (its default is 150 MiB here)
POLL_S = 0.01                      # polling interval of the failure rows
FAILURE_TIMEOUT_S = 120            # one death / recovery must happen within this


# ====================================================================== rows


WORKLOADS: dict[str, Workload] = {}
NETNS_ROWS: set[str] = set()
EXTRA: dict = {}        # what a row wants reported beside its samples (the JSON's "extra")


def cluster_workload(name, unit, target=None, higher_is_better=False, warmup=1, peers=(),
                     relative_to=None, netns=False, batches=None):
    """Register ``setup(ray, cl) -> measure``; ``cl`` is the system's cluster
    (ShoalCluster / RayCluster) with the driver already connected."""

    def register(setup):
        WORKLOADS[name] = Workload(name, unit, higher_is_better, target, warmup,
                                   setup=setup, peers=peers, relative_to=relative_to,
                                   batches=batches)
        if netns:
            NETNS_ROWS.add(name)
        return setup

    return register


TASKS = 2000


@cluster_workload("cross-node task throughput", "tasks/s", higher_is_better=True)
def task_throughput(ray, cl):
    """Driver on the head (1 CPU); every task needs a sliver of "b", which
    only node B (2 CPUs) has: submit 2000 no-op tasks, then get them all."""
    cl.add_node("b", 2, {"b": 1})

    @ray.remote(resources={"b": 0.001})
    def noop():
        return None

    def measure():
        t0 = now()
        refs = [noop.remote() for _ in range(TASKS)]
        ray.get(refs, timeout=300)
        return TASKS / (now() - t0)

    return measure


TRANSFER = 256 * MB


def transfer_setup(ray, cl):
    cl.add_node("b", 2, {"b": 1})

    @ray.remote(resources={"b": 0.001})
    def make(n):
        import numpy as np

        return np.full(n, 1, dtype=np.uint8)        # written: no zero pages

    def measure():
        ref = make.remote(TRANSFER)
        ready, _ = ray.wait([ref], timeout=120, fetch_local=False)
        assert ready, "the task on B did not finish"
        t0 = now()
        arr = ray.get(ref, timeout=120)
        dt = now() - t0
        assert arr.nbytes == TRANSFER and arr[0] == 1 and arr[-1] == 1
        del arr, ref
        return TRANSFER / dt / 1e9

    return measure


cluster_workload("cross-node get 256MB", "GB/s", target=0.8, higher_is_better=True,
                 peers=("tcp",), relative_to=("tcp", "raw TCP"))(transfer_setup)
cluster_workload("cross-node get 256MB (netns)", "GB/s", target=0.8, higher_is_better=True,
                 peers=("tcp",), relative_to=("tcp", "raw TCP"), netns=True)(transfer_setup)


@cluster_workload("detect a dead node", "s", warmup=0, batches=1)
def detect_dead_node(ray, cl):
    """Per rep: add node B, run one task there, SIGKILL its agent / raylet
    and everything under it, poll until the head says it is dead."""

    @ray.remote(resources={"b": 0.001})
    def ping():
        return 1

    def measure():
        node = cl.add_node("b", 2, {"b": 1})
        assert ray.get(ping.remote(), timeout=60) == 1
        time.sleep(1.0)                      # a node that has been up a moment
        t0 = now()
        cl.kill(node)
        deadline = t0 + FAILURE_TIMEOUT_S
        while not cl.is_dead(node):
            if now() > deadline:
                raise TimeoutError(f"node not declared dead after {FAILURE_TIMEOUT_S} s")
            time.sleep(POLL_S)
        dt = now() - t0
        cl.remove(node)
        return dt

    return measure


def recover_actor_setup(ray, cl, affinity: bool):
    """An actor (max_restarts=1, max_task_retries=-1, resources {"w": 1}) on
    node B; node C also has "w". SIGKILL node B; time from the kill until a
    call on the actor returns (from C). A call that fails while the actor is
    unavailable is sent again at once (counted in extra["resent_calls"]).

    affinity=False: the actor is created while B is the only node with "w",
    then C joins. affinity=True: B and C are both up and the actor is put on
    B by a soft NodeAffinitySchedulingStrategy."""
    errors = retryable_errors(ray)
    strategies = ray.util.scheduling_strategies
    EXTRA["resent_calls"] = 0

    @ray.remote(max_restarts=1, max_task_retries=-1, resources={"w": 1})
    class Pinger:
        def where(self):
            return ray.get_runtime_context().get_node_id()

    nodes = [cl.add_node("w", 2, {"w": 1})]
    if affinity:
        nodes.append(cl.add_node("w", 2, {"w": 1}))

    def measure():
        b = nodes[0]
        if affinity:
            c = nodes[1]
            a = Pinger.options(scheduling_strategy=strategies.NodeAffinitySchedulingStrategy(
                b.node_id, soft=True)).remote()
        else:
            a = Pinger.remote()
        assert ray.get(a.where.remote(), timeout=60) == b.node_id, "not placed on B"
        if not affinity:
            c = cl.add_node("w", 2, {"w": 1})
        t0 = now()
        cl.kill(b)
        deadline = t0 + FAILURE_TIMEOUT_S
        while True:
            try:
                where = ray.get(a.where.remote(), timeout=max(0.1, deadline - now()))
                break
            except errors:
                if now() > deadline:
                    raise
                EXTRA["resent_calls"] += 1
                time.sleep(POLL_S)
        dt = now() - t0
        assert where == c.node_id, "restarted somewhere other than C"
        ray.kill(a)
        cl.remove(b)
        # the next rep: C is the new B (and, with affinity, a fresh node the new C)
        nodes[:] = [c] + ([cl.add_node("w", 2, {"w": 1})] if affinity else [])
        wait_until(lambda: ray.available_resources().get("w", 0) >= len(nodes), 60,
                   "the nodes' w to be free")
        return dt

    return measure


cluster_workload("recover a killed actor", "s", warmup=1, batches=1)(
    lambda ray, cl: recover_actor_setup(ray, cl, affinity=False))
cluster_workload("recover a killed actor (soft affinity)", "s", warmup=1, batches=1)(
    lambda ray, cl: recover_actor_setup(ray, cl, affinity=True))


def retryable_errors(ray):
    exc = ray.exceptions
    names = ("ActorUnavailableError", "ActorDiedError", "RayActorError")
    return tuple(getattr(exc, n) for n in names if hasattr(exc, n))


def wait_until(cond, timeout, what):
    deadline = now() + timeout
    while not cond():
        if now() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


# ================================================================ clusters


@dataclass
class Node:
    name: str
    pid: int                  # the agent's / raylet's pid
    node_id: str              # hex, as the runtime reports it
    handle: object = None     # Ray: the ray._private.node.Node; shoal netns: its Popen


def driver_sees(ray, node: Node) -> Node:
    """Wait until the driver's ``ray.nodes()`` lists ``node`` alive (shoal's
    driver node learns of new nodes from the head's view, every heartbeat)."""
    wait_until(lambda: any(n["NodeID"] == node.node_id and n["Alive"] for n in ray.nodes()),
               30, f"the driver to see node {node.name}")
    return node


def kill_tree(pid: int) -> list:
    """SIGKILL ``pid`` (its group if it leads one) and every descendant found
    now, all at once; returns the psutil processes to wait for."""
    import psutil

    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return tree


def reap(tree: list, timeout: float = 10) -> None:
    import psutil

    psutil.wait_procs(tree, timeout=timeout)


class ShoalCluster:
    """A head + its 1-CPU node (the driver's), nodes added by name; all in a
    private state directory. With ``netns``, the head is on namespace a's
    address (this process runs in a) and nodes start in namespace b."""

    def __init__(self, ray, netns: dict | None = None):
        self.ray = ray
        self.netns = netns
        self.root = tempfile.mkdtemp(prefix="shoal-bench-cluster-")
        os.environ["SHOAL_STATE_DIR"] = os.path.join(self.root, "head")
        from shoal.cluster import launch

        self.launch = launch
        self.popens: list = []
        self.trees: list = []
        host = netns["ip"]["a"] if netns else "127.0.0.1"
        info = launch.start_head(host, 0, num_cpus=1)
        self.address, self.token_file = info["address"], info["token_file"]
        ray.init(address="auto")

    def add_node(self, name: str, num_cpus: int, resources: dict) -> Node:
        launch = self.launch
        if not self.netns:
            pid = launch.start_node(self.address, num_cpus=num_cpus,
                                    resources=resources)["node_pid"]
            popen = None
        else:                     # in namespace b, with a state directory of its own
            env = dict(os.environ, SHOAL_STATE_DIR=os.path.join(self.root, f"{name}-{len(self.popens)}"))
            log = open(os.path.join(self.root, f"node-{name}.log"), "ab")
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.netns["ns"]["b"], sys.executable, "-m",
                 "shoal.cluster.agent", "--address", self.address, "--token-file",
                 self.token_file, "--num-cpus", str(num_cpus), "--resources",
                 json.dumps(resources)], env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=log, start_new_session=True)
            log.close()
            self.popens.append(popen)
            pid = popen.pid       # `ip netns exec` execs the agent: same pid
        row = {}

        def alive():
            nonlocal row
            rows = [n for n in launch.status()["nodes"] if n["pid"] == pid]
            row = rows[0] if rows else {}
            return row.get("state") == "ALIVE"
        wait_until(alive, 30, f"node {name} to join")
        return driver_sees(self.ray, Node(name, pid, row["node_id"], popen))

    def kill(self, node: Node) -> None:
        self.trees += kill_tree(node.pid)

    def is_dead(self, node: Node) -> bool:
        return any(n["node_id"] == node.node_id and n["state"] == "DEAD"
                   for n in self.launch.status()["nodes"])

    def remove(self, node: Node) -> None:
        reap(self.trees)
        self.trees = []

    def close(self) -> None:
        try:
            self.ray.shutdown()
        finally:
            try:
                self.launch.stop()
            finally:
                for p in self.popens:
                    if p.poll() is None:
                        self.trees += kill_tree(p.pid)
                reap(self.trees)
                for p in self.popens:
                    p.wait(10)
                shutil.rmtree(self.root, ignore_errors=True)


class RayCluster:
    """ray.cluster_utils.Cluster: a 1-CPU head (the driver's node) and nodes
    added with cluster.add_node; killed by SIGKILL of a node's raylet and
    everything under it (its workers and agents)."""

    def __new__(cls, ray, netns=None):
        return object.__new__(RayNetnsCluster if netns else cls)

    def __init__(self, ray, netns=None):
        from ray.cluster_utils import Cluster

        self.ray = ray
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": False, "object_store_memory": STORE_BYTES})
        ray.init(address=self.cluster.address)
        self.trees: list = []

    def add_node(self, name: str, num_cpus: int, resources: dict) -> Node:
        n = self.cluster.add_node(num_cpus=num_cpus, resources=resources,
                                  object_store_memory=STORE_BYTES)
        raylet = n.all_processes["raylet"][0].process.pid
        return driver_sees(self.ray, Node(name, raylet, n.node_id, n))

    def kill(self, node: Node) -> None:
        self.trees += kill_tree(node.pid)

    def is_dead(self, node: Node) -> bool:
        return any(n["NodeID"] == node.node_id and not n["Alive"] for n in self.ray.nodes())

    def remove(self, node: Node) -> None:
        reap(self.trees)
        self.trees = []
        # the node's processes that were not under its raylet (none expected)
        self.cluster.remove_node(node.handle, allow_graceful=False)

    def close(self) -> None:
        try:
            self.ray.shutdown()
        finally:
            reap(self.trees)
            self.cluster.shutdown()


class RayNetnsCluster(RayCluster):
    """Ray across two network namespaces: ``ray start --head --block`` in
    namespace a (where this process runs), ``ray start --address ... --block``
    in b, each on its namespace's address; ended by SIGKILL of each
    ``ray start`` process and everything under it. Transfer rows only."""

    def __init__(self, ray, netns):
        # `ray start` on a non-loopback address turns token authentication
        # on; Cluster() (the loopback rows) runs without it: the same here.
        os.environ["RAY_AUTH_MODE"] = "disabled"
        self.ray, self.netns = ray, netns
        self.popens: list = []
        self.trees: list = []
        self.log = tempfile.NamedTemporaryFile(prefix="ray-bench-netns-", suffix=".log",
                                               delete=False)
        host = netns["ip"]["a"]
        with socket.socket() as s:
            s.bind((host, 0))
            self.port = s.getsockname()[1]
        self.address = f"{host}:{self.port}"
        try:
            self._start([], ["--head", "--node-ip-address", host, "--port", str(self.port),
                             "--num-cpus", "1", "--include-dashboard", "false"])
            wait_until(self._gcs_up, 60, "Ray's head in namespace a")
            ray.init(address=self.address)
        except BaseException:
            self.close()
            raise

    def _gcs_up(self) -> bool:
        host, port = self.address.split(":")
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
        except OSError:
            return False
        return b"Ray runtime started" in Path(self.log.name).read_bytes()

    def _start(self, prefix: list, args: list) -> subprocess.Popen:
        p = subprocess.Popen([*prefix, sys.executable, "-m", "ray.scripts.scripts", "start",
                              *args, "--object-store-memory", str(STORE_BYTES),
                              "--disable-usage-stats", "--block"],
                             stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                             start_new_session=True)
        self.popens.append(p)
        return p

    def add_node(self, name: str, num_cpus: int, resources: dict) -> Node:
        ip = self.netns["ip"]["b"]
        p = self._start(["ip", "netns", "exec", self.netns["ns"]["b"]],
                        ["--address", self.address, "--node-ip-address", ip,
                         "--num-cpus", str(num_cpus), "--resources", json.dumps(resources)])
        found = []

        def up():
            found[:] = [n["NodeID"] for n in self.ray.nodes()
                        if n["Alive"] and n["NodeManagerAddress"] == ip]
            return bool(found)
        wait_until(up, 60, f"Ray's node {name} in namespace b")
        return Node(name, p.pid, found[0], p)

    def remove(self, node: Node) -> None:
        raise NotImplementedError

    def close(self) -> None:
        try:
            self.ray.shutdown()
        finally:
            for p in reversed(self.popens):       # nodes first, then the head
                self.trees += kill_tree(p.pid)
            reap(self.trees)
            for p in self.popens:
                p.wait(10)
            self.log.close()
            os.unlink(self.log.name)


# ================================================================ raw TCP

SENDER = r"""
import socket, sys
import numpy as np
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
buf = np.full(n, 7, dtype=np.uint8)            # written, like the task's array
s = socket.create_connection((host, port))
while s.recv(1) == b"g":
    s.sendall(memoryview(buf))
"""


def tcp_setup(netns: dict | None):
    """A receiver here (namespace a, or loopback) and a sender process
    (namespace b, or here); each measure() times one 256 MB sendall ->
    recv_into a reused, already-touched buffer, from the "go" byte to the
    last byte in."""
    import numpy as np

    host = netns["ip"]["a"] if netns else "127.0.0.1"
    srv = socket.create_server((host, 0))
    srv.settimeout(30)
    prefix = ["ip", "netns", "exec", netns["ns"]["b"]] if netns else []
    sender = subprocess.Popen([*prefix, sys.executable, "-c", SENDER, host,
                               str(srv.getsockname()[1]), str(TRANSFER)],
                              stdin=subprocess.DEVNULL, start_new_session=True)
    conn, _ = srv.accept()
    conn.settimeout(60)
    buf = np.ones(TRANSFER, dtype=np.uint8)
    view = memoryview(buf)

    def measure():
        got = 0
        t0 = now()
        conn.sendall(b"g")
        while got < TRANSFER:
            k = conn.recv_into(view[got:], TRANSFER - got)
            if not k:
                raise ConnectionError("the sender went away")
            got += k
        dt = now() - t0
        assert buf[0] == 7 and buf[-1] == 7
        buf[:] = 1
        return TRANSFER / dt / 1e9

    def close():
        try:
            conn.sendall(b"q")
        except OSError:
            pass
        conn.close()
        srv.close()
        try:
            sender.wait(10)
        except subprocess.TimeoutExpired:
            reap(kill_tree(sender.pid))
            sender.wait()

    return measure, close


# ================================================================ child


def child(system: str, name: str, reps: int, netns: dict | None) -> dict:
    w = WORKLOADS[name]
    extra: dict = {}
    if system == "tcp":
        measure, close = tcp_setup(netns)
        try:
            samples = measure_n(measure, w.warmup, reps)
        finally:
            close()
        return result(system, w, samples, extra)

    t0 = now()
    if system == "shoal":
        import shoal as ray

        cls = ShoalCluster
    elif system == "ray":
        import ray
        import ray.util.scheduling_strategies  # noqa: F401  (shoal imports its own eagerly)

        cls = RayCluster
    else:
        raise SystemExit(f"unknown system {system!r}")
    extra["import_s"] = now() - t0
    extra["version"] = getattr(ray, "__version__", "?")
    t0 = now()
    cl = cls(ray, netns)
    extra["cluster_start_s"] = now() - t0
    try:
        samples = measure_n(w.setup(ray, cl), w.warmup, reps)
    finally:
        t0 = now()
        cl.close()
        extra["cluster_stop_s"] = now() - t0
    extra.update(EXTRA)
    return result(system, w, samples, extra)


def child_main(args) -> None:
    netns = json.loads(args.netns) if args.netns else None
    print_result(lambda: child(args.system, args.workload, args.reps, netns))
    sys.stdout.flush()
    os._exit(0)      # skip Ray's atexit hooks: its processes are gone already


# ================================================================ namespaces


def sh(*args) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=20)


class Fabric:
    """Namespaces ``shoalbench-TAG-a`` and ``-b`` (10.232.X.1 and .2/24), each
    with one veth on a bridge in ``shoalbench-TAG-hub``; nothing is added to
    this machine's own namespace. ``close()`` deletes them all."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        octet = int(tag[:2], 16) % 200 + 20
        self.made: list = []
        self.ns, self.ip = {}, {}
        hub, bridge = f"shoalbench-{tag}-hub", f"sb{tag}br"
        try:
            self._add(hub)
            sh("ip", "-n", hub, "link", "add", bridge, "type", "bridge")
            sh("ip", "-n", hub, "link", "set", bridge, "up")
            for i, name in enumerate("ab"):
                ns, dev, hub_dev = f"shoalbench-{tag}-{name}", f"sb{tag}n{i}", f"sb{tag}h{i}"
                ip = f"10.232.{octet}.{i + 1}"
                self._add(ns)
                sh("ip", "-n", hub, "link", "add", hub_dev, "type", "veth", "peer", "name",
                   dev, "netns", ns)
                sh("ip", "-n", hub, "link", "set", hub_dev, "master", bridge)
                sh("ip", "-n", hub, "link", "set", hub_dev, "up")
                sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
                sh("ip", "-n", ns, "link", "set", dev, "up")
                sh("ip", "-n", ns, "link", "set", "lo", "up")
                self.ns[name], self.ip[name] = ns, ip
        except BaseException:
            self.close()
            raise

    def _add(self, ns: str) -> None:
        sh("ip", "netns", "add", ns)
        self.made.append(ns)

    def close(self) -> list:
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                timeout=20).stdout.split()
        left = [ns for ns in self.made if ns in listed]
        self.made = left
        return left


def netns_available() -> str | None:
    """None if namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None:
        return "no iproute2 (ip)"
    return None


# ================================================================ driver


def leftovers(run_id: str) -> list:
    """Processes still carrying this run's marker in their environment."""
    import psutil

    me = os.getpid()
    out = []
    for p in psutil.process_iter():
        if p.pid == me:
            continue
        try:
            if p.environ().get(RUN_ENV) == run_id:
                out.append(p)
        except (psutil.Error, OSError):
            pass
    return out


def sweep(run_id: str, log) -> list[str]:
    """Kill (by pid) whatever a child left behind; returns their descriptions."""
    import psutil

    found = leftovers(run_id)
    names = []
    for p in found:
        try:
            names.append(f"pid {p.pid} {' '.join(p.cmdline())[:100]}")
            p.kill()
        except psutil.Error:
            pass
    if found:
        psutil.wait_procs(found, timeout=10)
        log(f"  killed {len(found)} process(es) a child left: " + "; ".join(names))
    return names


def wait_quiet(max_wait: float, load: float, log) -> None:
    deadline = time.monotonic() + max_wait
    while True:
        one = os.getloadavg()[0]
        if one < load:
            log(f"load average {one:.2f} < {load:g}: starting")
            return
        if time.monotonic() >= deadline:
            log(f"load average still {one:.2f} after {max_wait:g} s: starting anyway")
            return
        time.sleep(10)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Cluster benchmarks: shoal against Ray, "
                                            "two or three nodes on one machine.")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batches", type=int, default=2,
                   help="fresh subprocesses per system the reps are split over (default 2; "
                        "the failure rows use 1: each rep adds and kills its own nodes)")
    p.add_argument("--only", nargs="+", metavar="ROWNAME")
    p.add_argument("--systems", default="shoal,ray,tcp")
    p.add_argument("--timeout", type=float, default=300,
                   help="seconds allowed to one subprocess (default 300)")
    p.add_argument("--markdown", metavar="FILE")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--list", action="store_true")
    p.add_argument("--no-netns", action="store_true", help="skip the network-namespace row")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                   help="first wait up to S seconds for the 1-minute load average to "
                        "drop below --quiet-load")
    p.add_argument("--quiet-load", type=float, default=1.0)
    # the child side (one measurement process)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--system", help=argparse.SUPPRESS)
    p.add_argument("--workload", help=argparse.SUPPRESS)
    p.add_argument("--netns", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return args
    return common.check_args(p, args, SYSTEMS, WORKLOADS)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    if args.list:
        for n, w in WORKLOADS.items():
            print(f"{n:<32} {w.unit:<8} target {w.target_text}")
        return 0

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.wait_quiet > 0:
        wait_quiet(args.wait_quiet, args.quiet_load, log)
    machine = common.machine_line()
    load_start = os.getloadavg()
    log(f"machine: {machine}")
    log(f"systems: {', '.join(LABELS[s] for s in args.systems)}; reps {args.reps}; "
        f"timeout {args.timeout:g} s per subprocess")

    run_id = uuid.uuid4().hex
    env = common.child_env()
    env[RUN_ENV] = run_id
    notes: list[str] = []
    fabric = None
    results: dict = {}
    started = time.monotonic()

    def runner_for(netns: dict | None):
        prefix = ["ip", "netns", "exec", netns["ns"]["a"]] if netns else None
        extra = ["--child"] + (["--netns", json.dumps(netns)] if netns else [])

        def runner(system, name, reps, timeout):
            r = common.run_child(system, name, reps, timeout, script=Path(__file__),
                                 prefix=prefix, extra_args=extra, env=env)
            left = sweep(run_id, log)
            if left:
                notes.append(f"{LABELS[system]} on {name!r}: killed {len(left)} leftover "
                             f"process(es)")
            return r
        return runner

    def stop(signum, frame):
        raise SystemExit(f"signal {signum}")

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        for name in args.names:
            netns = None
            if name in NETNS_ROWS:
                why = "--no-netns" if args.no_netns else netns_available()
                if why:
                    log(f"{name}: skipped ({why})")
                    continue
                if fabric is None:
                    fabric = Fabric()
                netns = {"ns": fabric.ns, "ip": fabric.ip}
            systems = args.systems
            log(f"{name}:")
            results[name] = common.measure_workload(
                name, systems, args.reps, args.batches, args.timeout, log,
                workloads=WORKLOADS, runner=runner_for(netns), labels=LABELS)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if fabric is not None:
            left = fabric.close()
            if left:
                log(f"could not delete network namespaces: {left}")
        sweep(run_id, log)
    took = time.monotonic() - started
    load = (f"load average (1/5/15 min) {'/'.join(f'{x:.2f}' for x in load_start)} at the "
            f"start, {'/'.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    log(f"done in {took:.0f} s; {load}\n")

    header, rows = common.table_rows(results, args.systems, workloads=WORKLOADS, labels=LABELS)
    common.report(args, results, header, rows, machine,
                  common.failures(results, LABELS) + notes, "Failures and notes",
                  f"Median [min–max] over n repetitions, each system in its own fresh "
                  f"processes (bench/cluster.py --reps {args.reps} --batches {args.batches}; "
                  f"the failure rows one process per system). Speedup > 1 means shoal is "
                  f"better. Took {took:.0f} s; {load}.", log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
