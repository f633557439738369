"""Out-of-memory protection: the node's memory monitor kills a worker whose
task pushes the machine's memory past ``memory_usage_threshold``; the task
is retried, and fails with OutOfMemoryError once its retries are spent.

The threshold is set just above what the machine uses when the test starts
(``MARGIN`` more), so a task allocating ``ALLOC`` bytes crosses it while the
driver stays well below. Tasks hold their memory until killed, with a
deadline so that a monitor that never fires fails the test instead of
hanging it.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import shoal
from shoal.exceptions import ActorDiedError, OutOfMemoryError
from shoal.node.memory_monitor import read_memory
from tests.conftest import wait_for_file

MARGIN = 800 * 2**20
ALLOC = 1600 * 2**20
HOLD_S = 20.0        # how long a task holds its memory waiting to be killed


def _hold_memory(nbytes: int, log_path: str) -> str:
    with open(log_path, "a") as f:
        f.write(f"{os.getpid()}\n")
    block = np.ones(nbytes // 8)           # np.ones writes every page: resident
    wait_for_file(log_path + ".never", HOLD_S)
    return f"survived holding {block.nbytes} bytes"


def _attempts(log_path) -> int:
    return len(log_path.read_text().split())


@pytest.fixture
def oom_settings(monkeypatch):
    """Set the monitor's settings; must run before the cluster starts (the
    node reads them at init), hence ``oom_cluster`` below."""
    def apply(threshold: float | None = None, interval: str = "0.05"):
        if threshold is None:
            now = read_memory()
            threshold = (now.used + MARGIN) / now.total
        monkeypatch.setenv("SHOAL_MEMORY_USAGE_THRESHOLD", f"{threshold:.6f}")
        monkeypatch.setenv("SHOAL_MEMORY_MONITOR_INTERVAL_S", interval)
        return threshold
    return apply


@pytest.fixture
def oom_cluster(oom_settings, request):
    """shoal_cluster with the threshold ``MARGIN`` above the current use."""
    oom_settings()
    return request.getfixturevalue("shoal_cluster")


def test_task_killed_every_attempt_fails_with_out_of_memory_error(oom_cluster, tmp_path, capfd):
    log = tmp_path / "attempts"
    hog = shoal.remote(max_retries=2)(_hold_memory)
    with pytest.raises(OutOfMemoryError) as info:
        shoal.get(hog.remote(ALLOC, str(log)), timeout=90)
    message = str(info.value)
    assert "_hold_memory" in message and "GiB" in message
    assert "max_retries=2" in message and "SHOAL_MEMORY_USAGE_THRESHOLD" in message
    assert _attempts(log) == 3          # the first run and two retries, each killed
    kills = [line for line in capfd.readouterr().err.splitlines()
             if "memory monitor killed worker" in line]
    assert len(kills) == 3 and all("_hold_memory" in line for line in kills)
    # the node goes on working afterwards
    assert shoal.get(shoal.remote(lambda: 7).remote(), timeout=30) == 7


def _hold_memory_once(nbytes: int, log_path: str) -> str:
    if os.path.exists(log_path):
        return "retry ran"
    return _hold_memory(nbytes, log_path)


def test_task_killed_once_succeeds_on_retry(oom_cluster, tmp_path):
    log = tmp_path / "attempts"
    hog = shoal.remote(max_retries=1)(_hold_memory_once)
    assert shoal.get(hog.remote(ALLOC, str(log)), timeout=60) == "retry ran"
    assert _attempts(log) == 1


def test_task_without_retries_fails_at_the_first_kill(oom_cluster, tmp_path):
    log = tmp_path / "attempts"
    hog = shoal.remote(max_retries=0)(_hold_memory)
    with pytest.raises(OutOfMemoryError, match="max_retries=0"):
        shoal.get(hog.remote(ALLOC, str(log)), timeout=60)
    assert _attempts(log) == 1


@shoal.remote
class Hog:
    def grow(self, nbytes: int, log_path: str) -> str:
        return _hold_memory(nbytes, log_path)


def test_actor_killed_for_memory_dies_with_the_reason(oom_cluster, tmp_path):
    hog = Hog.remote()
    with pytest.raises(ActorDiedError, match="memory monitor") as info:
        shoal.get(hog.grow.remote(ALLOC, str(tmp_path / "attempts")), timeout=60)
    assert "GiB" in str(info.value)
    with pytest.raises(ActorDiedError):     # dead for later calls too (max_restarts=0)
        shoal.get(hog.grow.remote(0, str(tmp_path / "attempts")), timeout=30)


def _hold_briefly(log_path: str) -> str:
    with open(log_path, "a") as f:
        f.write(f"{os.getpid()}\n")
    wait_for_file(log_path + ".never", 1.0)   # running long enough to be seen and killed
    return "finished"


@pytest.mark.parametrize("interval, killed", [("0.05", True), ("0", False)])
def test_monitor_interval_zero_turns_it_off(oom_settings, request, tmp_path, interval, killed):
    oom_settings(threshold=0.001, interval=interval)     # any machine is above this
    request.getfixturevalue("shoal_cluster")
    from shoal.core import current_core
    assert (current_core().node.memory_monitor is None) == (not killed)
    ref = shoal.remote(max_retries=0)(_hold_briefly).remote(str(tmp_path / "attempts"))
    if killed:
        with pytest.raises(OutOfMemoryError):
            shoal.get(ref, timeout=30)
    else:
        assert shoal.get(ref, timeout=30) == "finished"
