"""Fixtures shared by every tier: a fresh local cluster per test, and a check
that it left no worker process behind."""
from __future__ import annotations

import inspect
import os
import time

import psutil
import pytest

# Local clusters in tests start no dashboard (tests/cluster/test_dashboard.py
# turns it on where it is the subject); set before any test starts shoal.
os.environ.setdefault("SHOAL_INCLUDE_DASHBOARD", "0")


def wait_for(condition, timeout: float = 10.0, interval: float = 0.01, what: str = "condition"):
    """Poll ``condition`` until it is truthy or ``timeout`` passes (then fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def worker_children() -> list:
    for attempt in range(5):
        try:
            children = psutil.Process().children(recursive=True)
            break
        except IndexError:
            # psutil reads every /proc/PID/stat; one of a process exiting at
            # that instant can come back empty (psutil's _ppid_map then fails)
            if attempt == 4:
                raise
    return [p for p in children if "shoal.worker.main" in " ".join(_cmdline(p))]


def _cmdline(p) -> list:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


@pytest.fixture
def shoal_cluster(request):
    """A local cluster with 2 CPUs (override with @pytest.mark.cluster(...)),
    shut down afterwards; fails the test if any worker outlives it."""
    import shoal
    marker = request.node.get_closest_marker("cluster")
    kwargs = dict(num_cpus=2, object_store_memory=256 * 1024 * 1024)
    if marker is not None:
        kwargs.update(marker.kwargs)
    shoal.init(**kwargs)
    try:
        yield shoal
    finally:
        shoal.shutdown()
        left = wait_for(lambda: not worker_children(), timeout=10,
                        what="worker processes to exit") and []
        assert not left


@pytest.fixture(autouse=True)
def _no_leftover_cluster():
    yield
    import shoal
    if shoal.is_initialized():
        shoal.shutdown()
        pytest.fail("the test left shoal initialised")


def wait_for_file(path: str, seconds: float = 60.0) -> bool:
    """Inside a task: poll for ``path`` (created by the driver) with a deadline."""
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def touch(path: str) -> None:
    with open(path, "w"):
        pass


# touch and wait_for_file as source text, for driver programs run as scripts
# (tests/cluster: their preludes), which cannot import this module.
FILE_HELPERS = inspect.getsource(touch) + "\n" + inspect.getsource(wait_for_file)
