"""The cluster's control plane: shoal start/stop/status, nodes joining,
heartbeats, node death, head restarts."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys

import psutil
import pytest

from shoal.cluster import launch
from shoal.cluster.auth import read_token

from ..conftest import wait_for


def nodes(address=None):
    return launch.status(address)["nodes"]


def alive(address=None):
    return [n for n in nodes(address) if n["state"] == "ALIVE"]


def shoal_cli(*args, env_extra=None, timeout=60):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_cli_start_head_join_status_stop(cluster_env):
    out = shoal_cli("start", "--head", "--port", "0", "--num-cpus", "1",
                    "--dashboard-port", "0")
    assert out.returncode == 0, out.stderr
    assert "shoal start --address" in out.stdout
    assert "Dashboard: http://127.0.0.1:" in out.stdout
    token = read_token(cluster_env.token_path)
    assert token not in out.stdout + out.stderr          # the token is never printed
    address = launch.head_address(None)
    assert address.startswith("127.0.0.1:")
    out = shoal_cli("start", "--address", address, "--num-cpus", "2",
                    "--resources", '{"edge": 1}')
    assert out.returncode == 0, out.stderr
    out = shoal_cli("status")
    assert out.returncode == 0, out.stderr
    assert "2 node(s) alive" in out.stdout and "CPU: 0/3 used" in out.stdout
    assert "edge: 0/1 used" in out.stdout and "[head]" in out.stdout
    pids = list(cluster_env.processes().values())
    assert len(pids) == 4                     # head, two nodes, the dashboard
    out = shoal_cli("stop")
    assert out.returncode == 0 and "head" in out.stdout
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                             for p in pids), what="every cluster process to exit")
    assert shoal_cli("status").returncode == 1


def test_token_file_is_private_and_logs_never_hold_it(head, cluster_env):
    mode = stat.S_IMODE(os.stat(cluster_env.token_path).st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(cluster_env.path).st_mode) & 0o077 == 0
    token = read_token(cluster_env.token_path)
    for name in os.listdir(cluster_env.path):
        if name.endswith(".log"):
            with open(os.path.join(cluster_env.path, name)) as f:
                assert token not in f.read()


def test_head_listens_on_loopback_only_by_default(head):
    conns = psutil.Process(head["head_pid"]).net_connections(kind="tcp")
    listening = [c.laddr for c in conns if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening)


def test_a_second_head_on_the_same_machine_is_refused(head):
    with pytest.raises(launch.LaunchError, match="already runs"):
        launch.start_head("127.0.0.1", 0)


def test_joining_with_the_token_from_the_environment_or_a_file(head, cluster_env, tmp_path):
    token = read_token(cluster_env.token_path)
    copy = tmp_path / "copied-token"
    copy.write_text(token)
    launch.start_node(head["address"], token_file=str(copy), num_cpus=1)
    os.environ["SHOAL_TOKEN"] = token
    try:
        launch.start_node(head["address"], num_cpus=1)
    finally:
        del os.environ["SHOAL_TOKEN"]
    assert len(alive(head["address"])) == 3


def test_joining_with_a_wrong_token_fails_clearly(head, tmp_path):
    bad = tmp_path / "bad-token"
    bad.write_text("f" * 64)
    with pytest.raises(Exception, match="token"):
        launch.start_node(head["address"], token_file=str(bad), num_cpus=1)
    assert len(alive(head["address"])) == 1


def test_a_killed_node_is_declared_dead_within_the_timeout(head):
    node = launch.start_node(head["address"], num_cpus=1)
    assert len(alive()) == 2
    os.kill(node["node_pid"], signal.SIGKILL)
    wait_for(lambda: len(alive()) == 1, timeout=10, what="the killed node to be declared dead")
    dead = [n for n in nodes() if n["state"] == "DEAD"]
    assert len(dead) == 1 and dead[0]["pid"] == node["node_pid"] and dead[0]["death_reason"]


def test_a_stopped_node_reports_resources_and_pending_work(head):
    s = launch.status()
    (n,) = s["nodes"]
    assert n["resources"]["CPU"] == 1 and n["available"]["CPU"] == 1
    assert n["pending_tasks"] == 0 and n["is_head_node"]
    text = launch.format_status(s)
    assert "1 node(s) alive" in text and "CPU: 0/1 used" in text


def test_a_restarted_head_recovers_its_nodes_and_they_reconnect(head, cluster_env):
    before = {n["node_id"] for n in alive()}
    head_proc = psutil.Process(head["head_pid"])
    head_proc.send_signal(signal.SIGKILL)
    head_proc.wait(10)
    port = head["address"].rsplit(":", 1)[1]
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cluster.head", "--host", "127.0.0.1",
                             "--port", port, "--token-file", cluster_env.token_path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    cluster_env.record_process("head", proc.pid)
    wait_for(lambda: _try_alive_ids() == before, timeout=20,
             what="the node to reconnect to the restarted head")


def _try_alive_ids():
    try:
        return {n["node_id"] for n in alive()}
    except Exception:
        return None


def test_a_node_the_head_declared_dead_is_fenced_and_rejoins_as_new(head):
    node = launch.start_node(head["address"], num_cpus=1)
    (old,) = [n["node_id"] for n in alive() if n["pid"] == node["node_pid"]]
    p = psutil.Process(node["node_pid"])
    p.suspend()                       # cut off: no heartbeats, but not dead
    try:
        wait_for(lambda: any(n["node_id"] == old and n["state"] == "DEAD" for n in nodes()),
                 timeout=10, what="the silent node to be declared dead")
    finally:
        p.resume()
    wait_for(lambda: any(n["pid"] == node["node_pid"] and n["node_id"] != old
                         for n in alive()), timeout=10, what="the node to rejoin under a new id")
    assert any(n["node_id"] == old and n["state"] == "DEAD" for n in nodes())
