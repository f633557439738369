"""Lineage reconstruction: lost results are made again by re-running their
tasks; what cannot be rebuilt says why."""
from __future__ import annotations

import glob
import os
import signal

import numpy as np
import pytest

import shoal
from shoal.exceptions import ObjectLostError
from shoal.util.state import list_objects

from ..conftest import touch, wait_for

MB = 2**20
STORE = 48 * MB


@pytest.fixture
def spill_dir(tmp_path, monkeypatch):
    path = tmp_path / "spill"
    monkeypatch.setenv("SHOAL_OBJECT_SPILLING_DIRECTORY", str(path))
    return path


@pytest.fixture
def runs(tmp_path):
    """A directory where tasks leave one file per execution."""
    path = tmp_path / "runs"
    path.mkdir()
    return path


def count(runs, name) -> int:
    return len(glob.glob(str(runs / f"{name}-*")))


def mark(runs, name) -> None:
    touch(str(runs / f"{name}-{os.getpid()}-{os.urandom(4).hex()}"))


def spill_everything(n=8):
    """Fill the store with fresh objects so that older ones go to disk."""
    return [shoal.put(np.zeros(STORE // 8 // 8 * 1, dtype=np.float64) + i) for i in range(n)]


def where(ref) -> str:
    rows = list_objects(filters=[("object_id", "=", ref.hex())])
    return rows[0]["where"] if rows else "GONE"


def lose_spill_files(spill_dir) -> int:
    files = glob.glob(str(spill_dir / "*" / "*"))
    for f in files:
        os.unlink(f)
    return len(files)


pytestmark = pytest.mark.cluster(num_cpus=2, object_store_memory=STORE)


def test_a_lost_result_is_rebuilt_by_rerunning_its_task(spill_dir, runs, shoal_cluster):
    @shoal.remote
    def make(i):
        mark(runs, "make")
        return np.arange(MB, dtype=np.int64) * i

    ref = make.remote(3)
    shoal.wait([ref])
    filler = spill_everything()
    wait_for(lambda: where(ref) == "SPILLED", what="the result to be spilled")
    assert lose_spill_files(spill_dir) >= 1
    out = shoal.get(ref, timeout=30)
    assert np.array_equal(out, np.arange(MB, dtype=np.int64) * 3)
    assert count(runs, "make") == 2
    del filler


def test_rebuild_recurses_through_evicted_arguments(spill_dir, runs, shoal_cluster):
    @shoal.remote
    def make():
        mark(runs, "make")
        return np.full(MB, 5, dtype=np.int64)

    @shoal.remote
    def double(a):
        mark(runs, "double")
        return a * 2

    x = make.remote()
    y = double.remote(x)
    shoal.wait([y])
    del x                                    # x's value goes; its lineage stays for y
    wait_for(lambda: any(r["where"] == "EVICTED" for r in list_objects()))
    filler = spill_everything()
    wait_for(lambda: where(y) == "SPILLED")
    lose_spill_files(spill_dir)
    assert (shoal.get(y, timeout=30) == 10).all()
    assert count(runs, "make") == 2 and count(runs, "double") == 2
    del filler


def test_a_task_waiting_on_a_lost_argument_gets_it_rebuilt(spill_dir, runs, shoal_cluster):
    @shoal.remote
    def make():
        mark(runs, "make")
        return np.full(MB, 2, dtype=np.int64)

    @shoal.remote
    def total(a):
        return int(a.sum())

    x = make.remote()
    shoal.wait([x])
    filler = spill_everything()
    wait_for(lambda: where(x) == "SPILLED")
    lose_spill_files(spill_dir)
    assert shoal.get(total.remote(x), timeout=30) == 2 * MB
    assert count(runs, "make") == 2
    del filler


def test_killing_the_worker_that_made_a_result_loses_nothing(shoal_cluster):
    @shoal.remote
    class Maker:
        def make(self):
            return np.full(MB, 9, dtype=np.int64)

        def pid(self):
            return os.getpid()

    m = Maker.remote()
    ref = m.make.remote()
    shoal.wait([ref])
    os.kill(shoal.get(m.pid.remote()), signal.SIGKILL)
    assert (shoal.get(ref, timeout=30) == 9).all()


def test_put_objects_cannot_be_rebuilt(spill_dir, shoal_cluster):
    ref = shoal.put(np.ones(MB))
    filler = spill_everything()
    wait_for(lambda: where(ref) == "SPILLED")
    lose_spill_files(spill_dir)
    with pytest.raises(ObjectLostError, match=r"shoal\.put\(\)"):
        shoal.get(ref, timeout=30)
    # the node carries on
    assert (shoal.get(shoal.put(np.full(MB, 4.0))) == 4.0).all()
    del filler


def test_tasks_without_retries_cannot_be_rebuilt(spill_dir, shoal_cluster):
    @shoal.remote(max_retries=0)
    def make():
        return np.ones(MB)

    ref = make.remote()
    shoal.wait([ref])
    filler = spill_everything()
    wait_for(lambda: where(ref) == "SPILLED")
    lose_spill_files(spill_dir)
    with pytest.raises(ObjectLostError, match="max_retries=0|cannot be re-run"):
        shoal.get(ref, timeout=30)
    del filler


def test_rebuilds_spend_retries(spill_dir, runs, shoal_cluster):
    @shoal.remote(max_retries=1)
    def make():
        mark(runs, "make")
        return np.ones(MB)

    ref = make.remote()
    shoal.wait([ref])
    for attempt in range(2):
        filler = spill_everything()
        wait_for(lambda: where(ref) == "SPILLED")
        lose_spill_files(spill_dir)
        if attempt == 0:
            assert shoal.get(ref, timeout=30).sum() == MB
        else:
            with pytest.raises(ObjectLostError, match="no retries left"):
                shoal.get(ref, timeout=30)
        del filler
    assert count(runs, "make") == 2


def test_actor_results_cannot_be_rebuilt(spill_dir, shoal_cluster):
    @shoal.remote
    class A:
        def make(self):
            return np.ones(MB)

    a = A.remote()
    ref = a.make.remote()
    shoal.wait([ref])
    filler = spill_everything()
    wait_for(lambda: where(ref) == "SPILLED")
    lose_spill_files(spill_dir)
    with pytest.raises(ObjectLostError, match="actor method"):
        shoal.get(ref, timeout=30)
    del filler


def test_lineage_is_released_with_the_results(shoal_cluster, runs):
    @shoal.remote
    def make():
        return np.ones(MB)

    @shoal.remote
    def double(a):
        return a * 2

    refs = [double.remote(make.remote()) for _ in range(5)]
    shoal.wait(refs, num_returns=len(refs))
    assert any(r["where"] == "EVICTED" for r in list_objects())
    del refs
    wait_for(lambda: list_objects() == [], what="every object and its lineage to go")


def test_small_results_keep_no_lineage(shoal_cluster):
    @shoal.remote
    def small():
        return 1

    refs = [small.remote() for _ in range(20)]
    shoal.get(refs)
    assert not any(r["lineage"] for r in list_objects())
