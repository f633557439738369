"""Machines made of network namespaces, for cluster tests that need each node
on an address of its own (tests/cluster/test_netns_workloads.py).

``Fabric(names)``: one namespace per name, each with one veth on a shared
bridge at 10.231.X.(i+1)/24. The bridge lives in a hub namespace of its own,
so nothing is added to the host's namespace; ``link(name, up)`` cuts or
restores one machine's cable. ``Procs``: processes started inside a
namespace, each in a session of its own, ended by process group and pid
(with every descendant: node agents' workers run in sessions of their own).
``NetCluster``: a head + node agents on those machines and driver programs
run with ``ip netns exec``, each with a state directory of its own.

Needs root and iproute2; ``requires_netns`` skips otherwise.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from shoal.cluster.auth import new_token, write_token

from ..conftest import FILE_HELPERS, wait_for

requires_netns = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="network namespaces need root and iproute2")


def sh(*args) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=20)


class Fabric:
    """Namespaces ``shoal-TAG-NAME`` on one bridge (in ``shoal-TAG-hub``)."""

    def __init__(self, names):
        tag = os.urandom(3).hex()
        self.tag = tag
        octet = int(tag[:2], 16) % 200 + 20
        self.hub = f"shoal-{tag}-hub"
        self.bridge = f"sh{tag}br"
        self.ns: dict = {}
        self.ip: dict = {}
        self.dev: dict = {}
        self.made: list = []
        try:
            self._add_ns(self.hub)
            sh("ip", "-n", self.hub, "link", "add", self.bridge, "type", "bridge")
            sh("ip", "-n", self.hub, "link", "set", self.bridge, "up")
            for i, name in enumerate(names):
                ns, dev, hub_dev = f"shoal-{tag}-{name}", f"sh{tag}n{i}", f"sh{tag}h{i}"
                ip = f"10.231.{octet}.{i + 1}"
                self._add_ns(ns)
                # made inside the hub namespace, the far end moved straight into ns
                sh("ip", "-n", self.hub, "link", "add", hub_dev, "type", "veth",
                   "peer", "name", dev, "netns", ns)
                sh("ip", "-n", self.hub, "link", "set", hub_dev, "master", self.bridge)
                sh("ip", "-n", self.hub, "link", "set", hub_dev, "up")
                sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
                sh("ip", "-n", ns, "link", "set", dev, "up")
                sh("ip", "-n", ns, "link", "set", "lo", "up")
                self.ns[name], self.ip[name], self.dev[name] = ns, ip, dev
        except BaseException:
            self.close()
            raise

    def _add_ns(self, ns: str) -> None:
        sh("ip", "netns", "add", ns)
        self.made.append(ns)

    def link(self, name: str, up: bool) -> None:
        """Plug or unplug machine ``name``'s cable (its end of the veth)."""
        sh("ip", "-n", self.ns[name], "link", "set", self.dev[name], "up" if up else "down")

    def close(self) -> list[str]:
        """Delete every namespace (their veths and the bridge go with them);
        returns the ones still listed afterwards."""
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                timeout=20).stdout
        return [ns for ns in self.made if ns in listed.split()]


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_tree(root: psutil.Process, group: bool = True) -> list:
    """SIGKILL ``root`` (its process group if it leads one) and every
    descendant found now; returns the processes to wait for."""
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    if group:
        try:
            if os.getpgid(root.pid) == root.pid:
                os.killpg(root.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for p in tree:
        try:
            p.kill()          # psutil checks the pid still names the same process
        except psutil.NoSuchProcess:
            pass
    return tree


class Procs:
    """Processes started in namespaces, each leading a session of its own."""

    def __init__(self):
        self.popens: list = []
        self.adopted: list = []        # psutil.Process: started by something we ran

    def spawn(self, ns: str, argv: list, env: dict, log) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
        self.popens.append(proc)
        return proc

    def adopt(self, pid: int, must_contain: str) -> None:
        """Also end ``pid`` at close (if its command line still says it is ours)."""
        try:
            p = psutil.Process(pid)
            if must_contain in " ".join(p.cmdline()):
                self.adopted.append(p)
        except psutil.Error:
            pass

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL one process, its group and its descendants, and reap it."""
        tree = kill_tree(psutil.Process(proc.pid)) if proc.poll() is None else []
        proc.wait(10)
        _, left = psutil.wait_procs(tree, timeout=10)
        assert not [p for p in left if _alive(p)], f"still running: {left}"

    def close(self) -> list:
        """End everything; returns what is somehow still alive."""
        tree = []
        for proc in self.popens:
            if proc.poll() is None:
                tree += kill_tree(psutil.Process(proc.pid))
        for p in self.adopted:
            if _alive(p):
                tree += kill_tree(p)
        for proc in self.popens:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        _, left = psutil.wait_procs(tree, timeout=10)
        return [p for p in left if _alive(p)] + [p.pid for p in self.popens
                                                 if p.returncode is None]


# A driver program's first lines: helpers, then shoal.init(address=...).
PRELUDE = '''
import json, os, sys, time
import numpy as np
import shoal

ARGS = json.loads(sys.argv[1])
OUT = ARGS["out"]

def node_id():
    return os.environ["SHOAL_NODE_ID"]

def machine():
    """This process's machine: the 10.231.* address of its namespace."""
    import psutil, socket
    (ip,) = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
             if a.family == socket.AF_INET and a.address.startswith("10.231.")]
    return ip

''' + FILE_HELPERS + '''
def hold(kind, started, release):
    """Leave the marker started/KIND-NODE_ID-PID (the test reads it with
    gate_markers), then wait for the file ``release``."""
    touch(os.path.join(started, f"{kind}-{node_id()}-{os.getpid()}"))
    assert wait_for_file(release)

def emit(name, value):
    """Hand ``value`` to the test as OUT/name.json (appears atomically)."""
    tmp = os.path.join(OUT, name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, os.path.join(OUT, name + ".json"))

@shoal.remote
def where():
    return node_id()

@shoal.remote
def hop(to):
    return node_id(), shoal.get(where.options(resources={to: 0.01}).remote(), timeout=60)

def wait_linked(names):
    """Every ordered pair of nodes can send each other tasks."""
    ids = ARGS["ids"]
    refs, expect = [], []
    for a in names:
        for b in names:
            if a != b:
                refs.append(hop.options(resources={"at_" + a: 0.01}).remote("at_" + b))
                expect.append([ids[a], ids[b]])
    got = [list(x) for x in shoal.get(refs, timeout=60)]
    assert got == expect, (got, expect)

shoal.init(address=ARGS["address"])
'''


class Driver:
    """A driver program running in a namespace; its results come back as
    JSON files (``emit``)."""

    def __init__(self, cluster, proc: subprocess.Popen, out, log):
        self.cluster, self.proc, self.out, self.log = cluster, proc, out, log

    def result(self, name: str, timeout: float = 60):
        path = self.out / f"{name}.json"

        def ready():
            if path.exists():
                return True
            if self.proc.poll() is not None and not path.exists():
                raise AssertionError(f"the driver exited ({self.proc.returncode}) without "
                                     f"{name}:\n{self.output()}")
            return False
        wait_for(ready, timeout=timeout, interval=0.05, what=f"the driver's {name}")
        return json.loads(path.read_text())

    def finish(self, timeout: float = 60) -> None:
        wait_for(lambda: self.proc.poll() is not None, timeout=timeout, interval=0.05,
                 what="the driver to exit")
        assert self.proc.returncode == 0, self.output()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


class NetCluster:
    """A head and node agents on a ``Fabric``'s machines. Every node gets a
    marker resource ``at_NAME`` (100 of it) so that work can be sent to it."""

    def __init__(self, fabric: Fabric, procs: Procs, tmp_path):
        self.fabric, self.procs, self.tmp = fabric, procs, tmp_path
        self.token_file = str(tmp_path / "token")
        write_token(self.token_file, new_token())
        with open(self.token_file) as f:
            self.token = f.read().strip()
        self.address = None
        self.head_ns = None
        self.agents: dict = {}       # name -> Popen of its agent
        self.ids: dict = {}          # name -> node id (hex) as the head last listed it
        self.logs: list = []
        self.drivers = 0

    def env(self, state: str, token: bool = False) -> dict:
        env = dict(os.environ, SHOAL_STATE_DIR=str(self.tmp / state),
                   SHOAL_NODE_TIMEOUT_S="2", SHOAL_HEARTBEAT_INTERVAL_S="0.2",
                   PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        for k in ("SHOAL_TOKEN", "SHOAL_ADDRESS"):
            env.pop(k, None)
        if token:
            env["SHOAL_TOKEN"] = self.token
        return env

    def _log(self, name: str):
        path = self.tmp / f"{name}.log"
        self.logs.append(path)
        return open(path, "ab")

    def start_head(self, name: str = "a", num_cpus: int = 2, resources: dict | None = None):
        """The head on machine ``name``'s address, and a node agent beside it."""
        ns, ip = self.fabric.ns[name], self.fabric.ip[name]
        env = self.env(f"s-{name}")
        with self._log("head") as log:
            self.procs.spawn(ns, [sys.executable, "-m", "shoal.cluster.head", "--host", ip,
                                  "--port", "0", "--token-file", self.token_file], env, log)
        head_json = self.tmp / f"s-{name}" / "head.json"
        wait_for(head_json.exists, timeout=20, interval=0.05, what="the head to listen")
        self.address = f"{ip}:{json.loads(head_json.read_text())['port']}"
        self.head_ns = ns
        self._agent(name, num_cpus, resources, ["--head-node"])
        return self

    def add_node(self, name: str, num_cpus: int = 2, resources: dict | None = None):
        self._agent(name, num_cpus, resources, [])
        return self

    def _agent(self, name, num_cpus, resources, extra) -> None:
        res = {f"at_{name}": 100, **(resources or {})}
        with self._log(f"node-{name}") as log:
            self.agents[name] = self.procs.spawn(
                self.fabric.ns[name],
                [sys.executable, "-m", "shoal.cluster.agent", "--address", self.address,
                 "--token-file", self.token_file, "--num-cpus", str(num_cpus),
                 "--resources", json.dumps(res), "--object-store-memory", str(512 << 20),
                 *extra], self.env(f"s-{name}"), log)

    # ------------------------------------------------------------- looking
    def status(self) -> dict | None:
        """The head's status op, asked from inside the head's namespace."""
        code = ("import json, sys\nfrom shoal.cluster.launch import status\n"
                "print(json.dumps(status(sys.argv[1], sys.argv[2])))")
        try:
            out = subprocess.run(["ip", "netns", "exec", self.head_ns, sys.executable, "-c",
                                  code, self.address, self.token_file],
                                 env=self.env("s-status"), capture_output=True, text=True,
                                 timeout=20)
        except subprocess.TimeoutExpired:
            return None
        return json.loads(out.stdout) if out.returncode == 0 else None

    def rows(self, name: str, state: str | None = None) -> list[dict]:
        """The head's rows for machine ``name`` (by its address), oldest first."""
        s = self.status()
        if s is None:
            return []
        ip = self.fabric.ip[name]
        return [n for n in s["nodes"] if not n.get("driver")
                and (n.get("peer_address") or [None])[0] == ip
                and (state is None or n["state"] == state)]

    def wait_alive(self, names=None, timeout: float = 30) -> dict:
        """Until every named machine (default: all with agents) has one ALIVE
        node; records and returns their ids."""
        names = list(names or self.agents)

        def all_up():
            s = self.status()
            if s is None:
                return False
            ids = {}
            for name in names:
                ip = self.fabric.ip[name]
                up = [n["node_id"] for n in s["nodes"] if not n.get("driver")
                      and n["state"] == "ALIVE"
                      and (n.get("peer_address") or [None])[0] == ip]
                if len(up) != 1:
                    return False
                ids[name] = up[0]
            return ids
        self.ids.update(wait_for(all_up, timeout=timeout, interval=0.1,
                                 what=f"nodes {names} to be alive"))
        return self.ids

    # ------------------------------------------------------------- drivers
    def driver(self, where: str, body: str, state: str | None = None, **args) -> Driver:
        """Start a driver program (PRELUDE + ``body``) in machine ``where``'s
        namespace, with SHOAL_TOKEN and a state directory of its own (no node
        agent there: it joins the cluster with a node of its own), or
        ``state``'s. ``args`` reach it as ARGS (with address, ids, out, ip)."""
        self.drivers += 1
        n = self.drivers
        out = self.tmp / f"out{n}"
        out.mkdir()
        script = self.tmp / f"driver{n}.py"
        script.write_text(PRELUDE + textwrap.dedent(body))
        args = {"address": self.address, "ids": self.ids, "out": str(out),
                "ip": self.fabric.ip, **args}
        log_path = self.tmp / f"driver{n}.log"
        with open(log_path, "ab") as log:
            self.logs.append(log_path)
            proc = self.procs.spawn(self.fabric.ns[where],
                                    [sys.executable, str(script), json.dumps(args)],
                                    self.env(state or f"s-drv{n}", token=True), log)
        return Driver(self, proc, out, log_path)

    def kill_node(self, name: str) -> None:
        """SIGKILL machine ``name``'s agent (its process group) and its workers."""
        self.procs.kill(self.agents[name])

    def dump_logs(self) -> None:
        for path in self.logs:
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            print(f"----- {path.name} (last 60 lines) -----")
            print("\n".join(text.splitlines()[-60:]))
