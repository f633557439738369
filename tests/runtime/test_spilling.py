"""Object spilling and memory observability, as a Ray user sees them.

When the shared-memory store is full, the least recently used objects that
no process has mapped go to files in the spill directory and come back when
they are read (a ``get`` or a task argument). Objects some process has
mapped (a live array from ``get``, a running task's argument) stay put.
``shoal.util.state.list_objects()`` and ``shoal.internal_memory_summary()``
show every object: size, where it lives, who holds it.

Most tests run against a 64 MB store with objects of 8 MB, so seven fit and
an eighth forces a spill; the spill directory is a fresh ``tmp_path``. A spill
file deleted or truncated behind shoal's back stands for a lost copy: a put
object is then lost (ObjectLostError), a task result is rebuilt by re-running
its task (node/lineage.py).
"""
from __future__ import annotations

import gc
import os
import shutil
import signal
import threading

import numpy as np
import pytest

import shoal
from shoal.core import current_core
from shoal.exceptions import GetTimeoutError, ObjectLostError, ObjectStoreFullError, ShoalError
from shoal.util.state import list_objects, memory_report
from tests.conftest import touch, wait_for, wait_for_file

MB = 2 ** 20
STORE = 64 * MB
N = MB                  # int64 elements: 8 MB an array
FIT = 7                 # 8 MB objects that fit in the store at once
COUNT = 3 * STORE // (8 * MB)    # objects totalling three times the store
GET_TIMEOUT = 30

pytestmark = pytest.mark.cluster(num_cpus=2, object_store_memory=STORE)


# ----------------------------------------------------------------- values
def pattern(i: int, n: int = N) -> np.ndarray:
    """An array whose contents differ from every other ``i``'s."""
    return np.arange(n, dtype=np.int64) * 7919 + i


def value(i: int):
    """The i-th object of a mixed workload: an array, bytes, or a dict of arrays."""
    kind = i % 3
    if kind == 0:
        return pattern(i)
    if kind == 1:
        return pattern(i).tobytes()
    return {"index": i, "a": pattern(i, N // 2), "b": pattern(-i, N // 2), "name": f"object {i}"}


def same(got, i: int) -> bool:
    """``got`` equals ``value(i)`` exactly (type, dtype and every element)."""
    want = value(i)
    if isinstance(want, np.ndarray):
        return (isinstance(got, np.ndarray) and got.dtype == want.dtype
                and np.array_equal(got, want))
    if isinstance(want, bytes):
        return type(got) is bytes and got == want
    return (isinstance(got, dict) and got.keys() == want.keys()
            and got["index"] == i and got["name"] == want["name"]
            and np.array_equal(got["a"], want["a"]) and np.array_equal(got["b"], want["b"]))


# ---------------------------------------------------------- remote helpers
@shoal.remote
def make(i):
    return value(i)


@shoal.remote
def check(x, i):
    return same(x, i)


@shoal.remote
def check_nested(refs, i):
    return same(shoal.get(refs[0]), i)


@shoal.remote
def hold_until(x, i, started, release):
    """Keep argument ``x`` mapped until the driver creates ``release``."""
    touch(started)
    if not wait_for_file(release, 60):
        return "never released"
    return same(x, i)


@shoal.remote
def gate(path):
    return wait_for_file(path, 60)


@shoal.remote
def use(x, _gate):
    return len(x)


@shoal.remote
def first(x):
    return int(x[0])


@shoal.remote
def double(x):
    return x * 2


@shoal.remote
def both_first(a, b):
    return int(a[0]) + int(b[0])


@shoal.remote
class Keeper:
    """Holds a zero-copy array from ``get`` (and the ref) as its state."""

    def keep(self, refs):
        self.refs = refs
        self.array = shoal.get(refs[0])
        return os.getpid()

    def first(self, x):
        return int(x[0])


# --------------------------------------------------------------- fixtures
@pytest.fixture
def spill_root(tmp_path, monkeypatch):
    """Spilling on, into a directory of this test's own."""
    root = tmp_path / "spill"
    monkeypatch.setenv("SHOAL_OBJECT_SPILLING_DIRECTORY", str(root))
    monkeypatch.delenv("SHOAL_OBJECT_SPILLING", raising=False)
    # a store full of objects in use waits this long for room before failing
    monkeypatch.setenv("SHOAL_OBJECT_STORE_FULL_TIMEOUT_S", "2")
    return root


@pytest.fixture
def cluster(spill_root, shoal_cluster):
    """A cluster started after ``spill_root`` set its environment."""
    yield shoal_cluster


@pytest.fixture
def cluster_without_spilling(spill_root, monkeypatch, request):
    monkeypatch.setenv("SHOAL_OBJECT_SPILLING", "0")
    yield request.getfixturevalue("shoal_cluster")


# ---------------------------------------------------------------- helpers
def get(refs, timeout: float = GET_TIMEOUT):
    return shoal.get(refs, timeout=timeout)


def row(ref) -> dict | None:
    rows = list_objects(filters=[("object_id", "=", ref.hex())])
    return rows[0] if rows else None


def spill_dir() -> str:
    return memory_report()["spill_directory"]


def spill_files() -> set:
    return set(os.listdir(spill_dir()))


def aligned(size: int) -> int:
    return max(64, (size + 63) & ~63)


def assert_accounts_agree() -> None:
    """The store's totals match its rows, and the files match the spilled rows."""
    report = memory_report()
    rows = report["objects"]
    in_shm = [r for r in rows if r["where"] == "SHARED_MEMORY"]
    spilled = [r for r in rows if r["where"] == "SPILLED"]
    assert report["store_used"] == sum(aligned(r["size"]) for r in in_shm)
    assert report["spilled_bytes"] == sum(r["size"] for r in spilled)
    assert set(os.listdir(report["spill_directory"])) == {r["object_id"] for r in spilled}
    for r in spilled:
        assert os.path.getsize(r["spill_path"]) == r["size"]


def wait_all_freed(timeout: float = 10.0) -> None:
    """No object is left anywhere: rows, table entries, store bytes, files."""
    gc.collect()

    def clean():
        report = memory_report()
        return (not report["objects"] and report["store_used"] == 0
                and report["spilled_bytes"] == 0 and not os.listdir(report["spill_directory"])
                and not current_core().node.objects.entries)
    try:
        wait_for(clean, timeout=timeout, what="every object to be freed")
    except AssertionError:
        report = memory_report()
        raise AssertionError(
            f"objects left: {report['objects'][:5]} ({len(report['objects'])} rows), "
            f"store_used={report['store_used']}, spilled_bytes={report['spilled_bytes']}, "
            f"table entries={len(current_core().node.objects.entries)}") from None


def fill(count: int, base: int = 1000) -> list:
    """Put ``count`` 8 MB arrays (forcing spills once the store is full)."""
    return [shoal.put(pattern(base + i)) for i in range(count)]


# ============================================================ round trips
def test_puts_totalling_three_times_the_store_come_back_identical(cluster, spill_root):
    refs = [shoal.put(value(i)) for i in range(COUNT)]

    report = memory_report()
    assert report["spilled_bytes"] > 0
    directory = report["spill_directory"]
    assert os.path.dirname(directory) == str(spill_root)
    rows = {r["object_id"]: r for r in report["objects"]}
    where = [rows[ref.hex()]["where"] for ref in refs]
    assert set(where) == {"SPILLED", "SHARED_MEMORY"}
    # least recently used first: the spilled objects are the oldest puts
    n_spilled = where.count("SPILLED")
    assert n_spilled >= COUNT - FIT
    assert where == ["SPILLED"] * n_spilled + ["SHARED_MEMORY"] * (COUNT - n_spilled)
    for ref in refs[:n_spilled]:
        path = rows[ref.hex()]["spill_path"]
        assert os.path.dirname(path) == directory and os.path.exists(path)
    assert_accounts_agree()

    ready, _ = shoal.wait(refs, num_returns=COUNT, timeout=GET_TIMEOUT)
    assert len(ready) == COUNT                  # spilled objects are ready...
    assert memory_report()["restored_total"] == 0   # ...without being read back

    for i, ref in enumerate(refs):
        got = get(ref)
        assert same(got, i), f"object {i} came back different"
        del got
    assert memory_report()["restored_total"] > 0
    assert_accounts_agree()

    shoal.shutdown()
    assert not os.path.exists(directory)
    assert os.listdir(spill_root) == []


def test_task_results_totalling_three_times_the_store_come_back_identical(cluster):
    refs = [make.remote(i) for i in range(COUNT)]
    ready, _ = shoal.wait(refs, num_returns=COUNT, timeout=60)
    assert len(ready) == COUNT

    report = memory_report()
    assert report["spilled_bytes"] > 0
    spilled = {r["object_id"] for r in report["objects"] if r["where"] == "SPILLED"}
    assert len(spilled) >= COUNT - FIT
    assert spilled <= {ref.hex() for ref in refs}
    assert spill_files() == spilled

    for i, ref in enumerate(refs):
        got = get(ref)
        assert same(got, i), f"result {i} came back different"
        del got
    assert_accounts_agree()


def test_spilled_objects_passed_to_tasks_are_restored_for_them(cluster):
    refs = [shoal.put(value(i)) for i in range(COUNT)]
    assert memory_report()["spilled_bytes"] > 0
    assert get([check.remote(ref, i) for i, ref in enumerate(refs)], timeout=60) == [True] * COUNT
    # and read inside a task, from a ref nested in an argument
    assert get([check_nested.remote([ref], i) for i, ref in enumerate(refs)],
               timeout=60) == [True] * COUNT
    assert memory_report()["restored_total"] > 0
    # nothing stays mapped once the tasks are done
    wait_for(lambda: all(r["mapped"] == 0 for r in list_objects()), what="no mapped object")
    assert_accounts_agree()


def test_two_driver_threads_putting_and_getting_through_a_spilling_store_see_their_own_data(
        cluster):
    errors: list = []

    def work(t: int) -> None:
        try:
            refs = [shoal.put(pattern(100 * t + i)) for i in range(COUNT // 2)]
            for _ in range(2):
                for i, ref in enumerate(refs):
                    got = get(ref)
                    if not np.array_equal(got, pattern(100 * t + i)):
                        errors.append(f"thread {t}: object {i} differs")
                    del got
        except BaseException as e:
            errors.append(f"thread {t}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in threads), "a thread is still running"
    assert errors == []
    assert memory_report()["spilled_total"] > 0
    assert_accounts_agree()


# ================================================= mapped objects stay put
def test_an_array_the_driver_holds_is_never_spilled_and_becomes_spillable_once_dropped(cluster):
    ref = shoal.put(pattern(0))
    held = get(ref)
    assert row(ref)["mapped"] == 1

    others = fill(COUNT)
    assert memory_report()["spilled_bytes"] > 0
    r = row(ref)
    assert r["where"] == "SHARED_MEMORY" and r["mapped"] == 1
    assert np.array_equal(held, pattern(0))

    del held
    wait_for(lambda: row(ref)["mapped"] == 0, what="the dropped array to be unmapped")
    more = fill(FIT + 1, base=5000)
    assert row(ref)["where"] == "SPILLED"
    assert np.array_equal(get(ref), pattern(0))
    del others, more


def test_an_argument_of_a_running_task_is_never_spilled(cluster, tmp_path):
    ref = shoal.put(value(0))
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    out = hold_until.remote(ref, 0, started, release)
    wait_for(lambda: os.path.exists(started), timeout=30, what="the task to start")
    r = row(ref)
    assert r["mapped"] >= 1 and r["pins"] >= 1

    others = fill(COUNT)
    assert memory_report()["spilled_bytes"] > 0
    assert row(ref)["where"] == "SHARED_MEMORY"

    touch(release)
    assert get(out) is True
    wait_for(lambda: row(ref)["mapped"] == 0 and row(ref)["pins"] == 0,
             what="the task's hold on its argument to end")
    del others


def test_put_fails_with_an_explanation_when_every_object_is_mapped(cluster):
    refs = [shoal.put(pattern(i)) for i in range(FIT)]
    held = [get(ref) for ref in refs]
    used = memory_report()["store_used"]

    with pytest.raises(ObjectStoreFullError, match="mapped") as info:
        shoal.put(pattern(99, 2 * N))
    assert "object_store_memory" in str(info.value)

    # nothing was corrupted or leaked by the failed put
    assert memory_report()["store_used"] == used
    assert memory_report()["spilled_bytes"] == 0
    for i, array in enumerate(held):
        assert np.array_equal(array, pattern(i))
    assert all(row(ref)["where"] == "SHARED_MEMORY" for ref in refs)

    del held, array
    big = shoal.put(pattern(99, 2 * N))
    assert np.array_equal(get(big), pattern(99, 2 * N))
    assert_accounts_agree()


def test_views_held_by_a_killed_actor_no_longer_count_as_mapped(cluster):
    ref = shoal.put(pattern(0))
    keeper = Keeper.remote()
    pid = get(keeper.keep.remote([ref]))
    wait_for(lambda: row(ref)["mapped"] == 1 and pid in row(ref)["worker_refs"],
             what="the actor's view and ref to show")

    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: row(ref)["mapped"] == 0 and row(ref)["worker_refs"] == {},
             what="the dead actor's view and refs to be released")
    assert row(ref)["driver_refs"] == 1

    # spillable again: pushed out by newer objects, and intact when read back
    others = fill(FIT + 1)
    assert row(ref)["where"] == "SPILLED"
    assert np.array_equal(get(ref), pattern(0))
    del others


# ================================================== files and their loss
def test_dropping_the_last_ref_to_a_spilled_object_deletes_its_file(cluster):
    refs = {}
    for i in range(FIT + 3):
        ref = shoal.put(pattern(i))
        refs[ref.hex()] = ref
    del ref
    spilled = list_objects(filters=[("where", "=", "SPILLED")])
    assert len(spilled) >= 3
    victim = spilled[0]
    assert os.path.exists(victim["spill_path"])
    before = memory_report()["spilled_bytes"]

    del refs[victim["object_id"]]
    wait_for(lambda: victim["object_id"] not in spill_files(), what="the spill file to go")
    assert not os.path.exists(victim["spill_path"])
    assert memory_report()["spilled_bytes"] == before - victim["size"]
    assert_accounts_agree()

    refs.clear()
    wait_all_freed()


def test_spilled_objects_held_only_inside_another_object_survive_and_come_back(cluster):
    inner = fill(FIT + 3, base=0)
    outer = shoal.put(inner)
    del inner
    rows = list_objects(filters=[("where", "=", "SPILLED")])
    assert rows and all(r["pins"] == 1 and r["refs"] == 0 for r in rows)
    for i, ref in enumerate(get(outer)):
        assert np.array_equal(get(ref), pattern(i))
    del outer, ref
    wait_all_freed()


def _spilled_victim(refs: list) -> tuple:
    victim = list_objects(filters=[("where", "=", "SPILLED")])[0]
    index = next(i for i, r in enumerate(refs) if r.hex() == victim["object_id"])
    return victim, index


def assert_lost(ref, object_id: str) -> None:
    """``get(ref)`` raises ObjectLostError itself (not a subclass) naming the
    object. The error is not kept: its traceback would hold ``ref``."""
    try:
        get(ref, timeout=10)
    except ObjectLostError as e:
        kind, message = type(e), str(e)
    else:
        pytest.fail("get of a lost object returned a value")
    assert kind is ObjectLostError, f"{kind.__name__}: {message}"
    assert object_id in message


def _still_works(refs: list, lost: int) -> None:
    """After a loss: other spilled objects come back, new puts and tasks work."""
    for i, ref in enumerate(refs):
        if i != lost:
            assert np.array_equal(get(ref), pattern(i))
    fresh = shoal.put(pattern(77))
    assert get(first.remote(fresh)) == 77


def test_get_of_an_object_whose_spill_file_was_deleted_raises_object_lost_error(cluster):
    refs = fill(FIT + 3, base=0)
    victim, lost = _spilled_victim(refs)
    os.unlink(victim["spill_path"])

    for _ in range(2):      # the same answer every time, not a hang
        assert_lost(refs[lost], victim["object_id"])
    _still_works(refs, lost)
    refs.clear()
    wait_all_freed()


def test_get_of_an_object_whose_spill_file_was_truncated_raises_object_lost_error(cluster):
    refs = fill(FIT + 3, base=0)
    victim, lost = _spilled_victim(refs)
    with open(victim["spill_path"], "r+b") as f:
        f.truncate(victim["size"] // 2)

    assert_lost(refs[lost], victim["object_id"])
    _still_works(refs, lost)
    refs.clear()
    wait_all_freed()


def test_a_task_given_a_lost_spilled_object_fails_and_its_function_still_runs_later(cluster):
    refs = fill(FIT + 3, base=0)
    victim, lost = _spilled_victim(refs)
    os.unlink(victim["spill_path"])

    assert_lost(first.remote(refs[lost]), victim["object_id"])
    # the same function on good arguments, on whichever worker: still runs
    kept = [i for i in range(len(refs)) if i != lost]
    assert get([first.remote(refs[i]) for i in kept], timeout=60) == [int(pattern(i)[0])
                                                                     for i in kept]
    refs.clear()
    wait_all_freed()


# ============================= a lost task result is rebuilt (lineage)
def _lose_spilled_result(i: int = 3):
    """A finished ``make(i)`` result (an array, rebuildable), spilled, its
    file deleted."""
    assert isinstance(value(i), np.ndarray)
    ref = make.remote(i)
    assert shoal.wait([ref], timeout=GET_TIMEOUT)[0]
    others = fill(FIT + 1)
    r = row(ref)
    assert r["where"] == "SPILLED" and r["lineage"] is True
    os.unlink(r["spill_path"])
    return ref, others


def test_tasks_sharing_a_lost_spilled_result_all_get_it_rebuilt(cluster):
    ref, others = _lose_spilled_result()
    outs = [first.remote(ref) for _ in range(4)]    # first's first calls on this cluster
    assert get(outs, timeout=10) == [int(pattern(3)[0])] * 4


def test_a_task_given_the_same_lost_spilled_result_twice_gets_it_rebuilt(cluster):
    ref, others = _lose_spilled_result()
    out = both_first.remote(ref, ref)
    assert get(out, timeout=10) == 2 * int(pattern(3)[0])


@pytest.mark.cluster(num_cpus=1, object_store_memory=STORE)
def test_a_queued_task_whose_spilled_argument_is_lost_gets_it_rebuilt(cluster, tmp_path):
    assert get(first.remote(np.arange(3))) == 0      # the worker knows ``first``
    ref, others = _lose_spilled_result()
    release = str(tmp_path / "release")
    blocker = gate.remote(release)                   # holds the only CPU
    queued = first.remote(ref)           # waits for the CPU with a lost argument
    touch(release)
    assert get(blocker) is True
    assert get(queued, timeout=10) == int(pattern(3)[0])       # rebuilt before it ran
    assert np.array_equal(get(ref, timeout=10), pattern(3))


# ======================================================== spilling off
def test_with_spilling_off_a_full_store_raises_object_store_full_error(
        cluster_without_spilling, spill_root):
    refs = fill(FIT, base=0)
    with pytest.raises(ObjectStoreFullError, match="spilling is off"):
        shoal.put(pattern(99))
    report = memory_report()
    assert report["spill_directory"] is None and report["spilled_total"] == 0
    assert all(r["where"] == "SHARED_MEMORY" for r in report["objects"])
    assert not spill_root.exists()
    for i, ref in enumerate(refs):
        assert np.array_equal(get(ref), pattern(i))
    # task results too
    with pytest.raises(ObjectStoreFullError):
        get(make.remote(0))
    del refs[0], ref
    assert np.array_equal(get(make.remote(0)), pattern(0))


# ========================================================= observability
def test_list_objects_rows_show_size_where_and_who_holds_each_object(cluster, tmp_path):
    big = shoal.put(pattern(0))
    small = shoal.put(b"x" * 1000)
    r = row(big)
    assert r["size"] >= 8 * N and r["where"] == "SHARED_MEMORY" and r["task"] == "put"
    assert (r["refs"], r["driver_refs"], r["worker_refs"], r["pins"], r["mapped"]) == \
        (1, 1, {}, 0, 0)
    assert r["spill_path"] is None
    r = row(small)
    assert r["where"] == "INLINE" and 1000 <= r["size"] < 100 * 1024

    # a ref held inside an actor shows under the actor's pid
    keeper = Keeper.remote()
    pid = get(keeper.keep.remote([big]))
    wait_for(lambda: row(big)["worker_refs"].get(pid, 0) >= 1, what="the actor's refs")
    r = row(big)
    assert r["driver_refs"] == 1 and r["mapped"] == 1
    assert r["refs"] == r["driver_refs"] + sum(r["worker_refs"].values())

    # an object passed to a pending task is pinned until the task ends
    path = str(tmp_path / "open")
    opened = gate.remote(path)
    pending = use.remote(small, opened)
    assert row(small)["pins"] == 1
    assert row(opened)["where"] == "PENDING"
    touch(path)
    assert get(pending) == 1000
    wait_for(lambda: row(small)["pins"] == 0, what="the pin to be released")

    # spilled rows, and the filters
    others = fill(COUNT)
    spilled = list_objects(filters=[("where", "=", "SPILLED")])
    assert spilled and all(os.path.exists(r["spill_path"]) for r in spilled)
    not_spilled = list_objects(filters=[("where", "!=", "SPILLED")])
    assert len(spilled) + len(not_spilled) == len(list_objects())
    assert all(r["where"] != "SPILLED" for r in not_spilled)
    assert len(list_objects(limit=2)) == 2
    assert list_objects(filters=[("where", "=", "SPILLED"), ("object_id", "=", big.hex())]) == []
    with pytest.raises(ValueError, match="operator"):
        list_objects(filters=[("size", ">", 0)])

    summary = shoal.internal_memory_summary()
    assert big.hex() in summary and f"pid {pid}" in summary
    assert "SHARED_MEMORY" in summary and "SPILLED" in summary and "INLINE" in summary
    assert "spilled now" in summary
    stats = shoal.internal_memory_summary(stats_only=True)
    assert "spilled now" in stats and big.hex() not in stats
    del others


@pytest.mark.parametrize("options", [{}, {"max_retries": 0}], ids=["retriable", "no-retries"])
def test_list_objects_names_the_function_that_made_a_finished_result(cluster, options):
    ref = make.options(**options).remote(0)
    ready, _ = shoal.wait([ref], timeout=GET_TIMEOUT)
    assert ready
    assert row(ref)["task"] == "make"


def test_list_objects_names_the_function_that_made_a_small_finished_result(cluster):
    ref = first.remote(np.arange(3))
    assert get(ref) == 0
    assert row(ref)["where"] == "INLINE" and row(ref)["task"] == "first"


# ================================================================== leaks
@pytest.mark.cluster(num_cpus=2, object_store_memory=16 * MB)
def test_two_thousand_tasks_with_array_arguments_leave_no_object_behind(cluster):
    outs = [first.remote(np.full(25_000, i, dtype=np.int64)) for i in range(2000)]
    assert get(outs, timeout=90) == list(range(2000))
    assert memory_report()["spilled_total"] > 0
    del outs
    wait_all_freed()


# ====================================== hard cases: pressure, a broken disk
def test_an_object_larger_than_the_store_fails_at_once_without_spilling_others(cluster):
    refs = fill(3, base=0)
    with pytest.raises(ObjectStoreFullError) as info:
        shoal.put(pattern(0, 10 * N))       # 80 MB into a 64 MB store
    assert "mapped" not in str(info.value), str(info.value)
    report = memory_report()
    assert report["spilled_total"] == 0, "objects were spilled for a put that could never fit"
    assert all(r["where"] == "SHARED_MEMORY" for r in report["objects"]), report["objects"]
    del refs


def test_actor_calls_whose_arguments_total_more_than_the_store_all_run(cluster):
    refs = fill(COUNT, base=0)
    keeper = Keeper.remote()
    outs = [keeper.first.remote(ref) for ref in refs]
    assert get(outs, timeout=60) == [int(pattern(i)[0]) for i in range(COUNT)]


def test_tasks_whose_arguments_and_results_outgrow_the_store_together_wait_instead_of_failing(
        spill_root, monkeypatch, request):
    """Each task needs 40 MB (a 20 MB argument, a 20 MB result) of the 64 MB
    store; two run at once. The shortage is transient, since a task's
    argument is unmapped when it ends, so every task should succeed (in Ray
    the store queues the allocation until memory frees)."""
    # a loaded machine may take a while to finish the task holding the room
    monkeypatch.setenv("SHOAL_OBJECT_STORE_FULL_TIMEOUT_S", "30")
    request.getfixturevalue("shoal_cluster")
    refs = [shoal.put(pattern(i, 20 * MB // 8)) for i in range(6)]
    outs = [double.remote(ref) for ref in refs]
    for i, out in enumerate(outs):
        got = get(out, timeout=60)
        assert np.array_equal(got, pattern(i, 20 * MB // 8) * 2)
        del got


@pytest.mark.cluster(num_cpus=1, object_store_memory=STORE)
def test_a_spill_directory_removed_behind_shoals_back_fails_tasks_instead_of_hanging(
        cluster, tmp_path):
    refs = fill(FIT + 3, base=0)
    assert list_objects(filters=[("where", "=", "SPILLED")])
    release = str(tmp_path / "release")
    blocker = gate.remote(release)                   # holds the only CPU
    outs = [first.remote(ref) for ref in refs]       # queued behind it
    shutil.rmtree(spill_dir())
    touch(release)
    assert get(blocker) is True

    for i, out in enumerate(outs):
        try:
            assert get(out, timeout=5) == int(pattern(i)[0])
        except GetTimeoutError:
            pytest.fail(f"task {i} hangs: the failed spill left it neither run nor failed")
        except ShoalError:
            pass            # failing because nothing can be spilled is fair
    assert get(first.remote(shoal.put(np.zeros(10))), timeout=10) == 0


def test_a_put_into_a_store_full_of_objects_in_use_waits_for_room(cluster):
    refs = [shoal.put(pattern(i)) for i in range(FIT)]
    held = [get(ref) for ref in refs]            # every object mapped: nothing can spill
    node = current_core().node
    done = {}

    def put_big():
        done["ref"] = shoal.put(pattern(99, 2 * N))

    t = threading.Thread(target=put_big)
    t.start()
    wait_for(lambda: len(node.memory_waiters) == 1, what="the put to wait for room")
    assert "ref" not in done
    held.clear()                                 # the views go: those objects may spill
    t.join(timeout=10)
    assert not t.is_alive() and np.array_equal(get(done["ref"]), pattern(99, 2 * N))
    for i, ref in enumerate(refs):
        assert np.array_equal(get(ref), pattern(i))
