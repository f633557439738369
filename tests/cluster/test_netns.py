"""The control plane across real network namespaces: a head and a node on
different addresses joined by a veth pair, a node killed, a link cut and
restored. Runs where the tests run as root with iproute2 (CI does); all
traffic stays inside the two namespaces."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from shoal.cluster.auth import new_token, write_token

from ..conftest import wait_for

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="network namespaces need root and iproute2")


def sh(*args):
    subprocess.run(args, check=True, capture_output=True, timeout=20)


class Net:
    """Two namespaces joined by a veth pair: a at .1, b at .2."""

    def __init__(self):
        tag = os.urandom(3).hex()
        self.a, self.b = f"shoal-{tag}-a", f"shoal-{tag}-b"
        self.va, self.vb = f"sh{tag}a", f"sh{tag}b"
        octet = int(tag[:2], 16) % 200 + 20
        self.ip_a, self.ip_b = f"10.231.{octet}.1", f"10.231.{octet}.2"
        self.procs: list = []
        sh("ip", "netns", "add", self.a)
        sh("ip", "netns", "add", self.b)
        sh("ip", "link", "add", self.va, "type", "veth", "peer", "name", self.vb)
        sh("ip", "link", "set", self.va, "netns", self.a)
        sh("ip", "link", "set", self.vb, "netns", self.b)
        for ns, dev, ip in ((self.a, self.va, self.ip_a), (self.b, self.vb, self.ip_b)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def spawn(self, ns: str, args: list, env: dict, log) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", *args],
                                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def run(self, ns: str, args: list, env: dict) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", *args],
                              env=env, capture_output=True, text=True, timeout=30)

    def link(self, up: bool) -> None:
        sh("ip", "-n", self.b, "link", "set", self.vb, "up" if up else "down")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


@pytest.fixture
def net(tmp_path):
    n = Net()
    try:
        yield n
    finally:
        n.close()


@pytest.fixture
def machines(net, tmp_path):
    """A head in namespace a (listening on its veth address) and a node agent
    in namespace b, each with a state directory of its own, as two machines."""
    token_file = tmp_path / "token"
    write_token(str(token_file), new_token())
    envs = {}
    for side in ("a", "b"):
        env = dict(os.environ, SHOAL_STATE_DIR=str(tmp_path / f"state-{side}"),
                   SHOAL_NODE_TIMEOUT_S="2", SHOAL_HEARTBEAT_INTERVAL_S="0.2",
                   PYTHONPATH=os.pathsep.join(sys.path))
        env.pop("SHOAL_TOKEN", None)
        envs[side] = env
    head_log = open(tmp_path / "head.log", "ab")
    net.spawn(net.a, ["shoal.cluster.head", "--host", net.ip_a, "--port", "0",
                      "--token-file", str(token_file)], envs["a"], head_log)
    head_json = tmp_path / "state-a" / "head.json"
    wait_for(head_json.exists, timeout=20, what="the head to listen")
    port = json.loads(head_json.read_text())["port"]
    address = f"{net.ip_a}:{port}"
    node_log = open(tmp_path / "node.log", "ab")
    agent = net.spawn(net.b, ["shoal.cluster.agent", "--address", address, "--token-file",
                              str(token_file), "--num-cpus", "1"], envs["b"], node_log)
    m = {"address": address, "token_file": str(token_file), "env": envs["a"], "agent": agent,
         "head_log": tmp_path / "head.log"}
    wait_for(lambda: len(nodes(net, m, "ALIVE")) == 1, timeout=30,
             what="the node in namespace b to join")
    return m


def nodes(net, m, state=None) -> list[str]:
    """Node lines of `shoal status`, run inside namespace a."""
    out = net.run(net.a, ["shoal.cli", "status", "--address", m["address"], "--token-file",
                          m["token_file"]], m["env"])
    if out.returncode != 0:
        return []
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("  ") and " pid=" in ln]
    return [ln for ln in lines if state is None or f" {state} " in ln]


def test_a_node_joins_a_head_at_another_address(net, machines):
    (line,) = nodes(net, machines, "ALIVE")
    assert f"pid={machines['agent'].pid}" in line or "CPU=1" in line
    log = machines["head_log"].read_text()
    assert "listening on " + net.ip_a in log


def test_a_killed_node_is_declared_dead(net, machines):
    os.kill(machines["agent"].pid, signal.SIGKILL)
    wait_for(lambda: len(nodes(net, machines, "DEAD")) == 1, timeout=15,
             what="the killed node to be declared dead")


def test_a_cut_link_makes_the_node_dead_and_it_rejoins_fenced(net, machines):
    (before,) = nodes(net, machines, "ALIVE")
    old_id = before.split()[0]
    net.link(False)
    try:
        wait_for(lambda: any(ln.split()[0] == old_id for ln in nodes(net, machines, "DEAD")),
                 timeout=20, what="the cut-off node to be declared dead")
    finally:
        net.link(True)
    wait_for(lambda: any(ln.split()[0] != old_id for ln in nodes(net, machines, "ALIVE")),
             timeout=30, what="the node to rejoin under a new id")
    dead = nodes(net, machines, "DEAD")
    assert any(ln.split()[0] == old_id for ln in dead)      # the old identity stays fenced


def test_the_head_is_not_reachable_on_an_address_it_was_not_asked_to_use(net, machines):
    port = machines["address"].rsplit(":", 1)[1]
    out = net.run(net.a, ["shoal.cli", "status", "--address", f"127.0.0.1:{port}",
                          "--token-file", machines["token_file"]], machines["env"])
    assert out.returncode == 1 and "cannot reach" in out.stderr

