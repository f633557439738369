"""Fixtures for cluster tests: real head and node agent processes on
loopback, in a state directory of the test's own, always stopped after."""
from __future__ import annotations

import psutil
import pytest

from shoal.cluster import launch
from shoal.cluster.state import StateDir


@pytest.fixture
def cluster_env(tmp_path, monkeypatch):
    """A private state dir and fast failure detection; stops everything
    `shoal start` launched from it, and checks that nothing survives."""
    monkeypatch.setenv("SHOAL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SHOAL_NODE_TIMEOUT_S", "2")
    monkeypatch.setenv("SHOAL_HEARTBEAT_INTERVAL_S", "0.2")
    monkeypatch.delenv("SHOAL_TOKEN", raising=False)
    yield StateDir()
    pids = list(StateDir().processes().values())
    launch.stop()
    left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not left, f"cluster processes left running: {left}"


@pytest.fixture
def head(cluster_env):
    """A head on a random loopback port with a 1-CPU node; its address."""
    return launch.start_head("127.0.0.1", 0, num_cpus=1)
