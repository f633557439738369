"""shoal.util.multiprocessing.Pool as a drop-in for multiprocessing.Pool:
results match the builtins, callbacks and AsyncResult behave the same,
errors re-raise as the user's own class, the initializer runs once per
process, and a closed, terminated or broken pool says so instead of hanging."""
from __future__ import annotations

import builtins
import itertools
import multiprocessing
import os
import pickle
import signal
import threading

import pytest

import shoal
from shoal.exceptions import ActorDiedError
from shoal.util.multiprocessing import Pool

try:
    from conftest import touch, wait_for, wait_for_file
except ImportError:   # pragma: no cover - depends on how pytest set sys.path
    from tests.conftest import touch, wait_for, wait_for_file

RESULT_TIMEOUT = 30


class CustomError(Exception):
    pass


# ------------------------------------------------ functions the workers run
def square(x):
    return x * x


def fail_on_three(x):
    if x == 3:
        raise CustomError(f"no {x}")
    return x


def when_file_exists(x, path):
    if not wait_for_file(path, RESULT_TIMEOUT):
        raise RuntimeError(f"{path} never appeared")
    return x


def meet(mine, other):
    """Touch ``mine`` and wait for ``other``: two calls only both return
    True if they run at the same time, in different processes."""
    touch(mine)
    return wait_for_file(other, 10)


def pid(_=None):
    return os.getpid()


def die(_=None):
    os.kill(os.getpid(), signal.SIGKILL)


_setup = {"runs": 0, "tag": None}


def setup_worker(tag):
    _setup["runs"] += 1
    _setup["tag"] = tag


def setup_seen(_=None):
    return os.getpid(), _setup["runs"], _setup["tag"]


def setup_fails():
    raise CustomError("initializer failed")


# ------------------------------------------------------------------ results
def test_map_starmap_and_apply_match_the_builtins(shoal_cluster):
    with Pool(2) as pool:
        assert pool.map(square, range(20)) == [x * x for x in range(20)]
        assert pool.map(square, range(7), chunksize=3) == [x * x for x in range(7)]
        assert pool.map(square, []) == []
        assert pool.map(square, (x for x in range(3))) == [0, 1, 4]
        assert pool.starmap(pow, [(2, 3), (3, 2)]) == [8, 9]
        assert pool.apply(divmod, (7, 2)) == (3, 1)
        assert pool.apply(int, ("ff",), {"base": 16}) == 255


def test_imap_keeps_order_and_imap_unordered_does_not_wait(shoal_cluster, tmp_path):
    gate = str(tmp_path / "gate")
    open_ = str(tmp_path)                       # exists already
    with Pool(2) as pool:
        unordered = pool.imap_unordered(when_file_exists_star, [(0, gate), (1, open_)])
        assert unordered.next(timeout=RESULT_TIMEOUT) == 1
        ordered = pool.imap(when_file_exists_star, [(2, gate), (3, open_)])
        with pytest.raises(multiprocessing.TimeoutError):
            ordered.next(timeout=0.1)
        touch(gate)
        assert list(ordered) == [2, 3]
        assert list(unordered) == [0]
        assert list(pool.imap(square, range(10), chunksize=3)) == [x * x for x in range(10)]


def when_file_exists_star(args):
    return when_file_exists(*args)


def test_imap_reads_an_endless_input_only_as_workers_take_it(shoal_cluster):
    with Pool(2) as pool:
        results = pool.imap(square, itertools.count(), chunksize=2)
        assert list(itertools.islice(results, 5)) == [0, 1, 4, 9, 16]


def test_async_results_call_back_and_report(shoal_cluster):
    seen = []
    done = threading.Event()
    with Pool(2) as pool:
        r = pool.apply_async(square, (4,), callback=seen.append)
        assert r.get(timeout=RESULT_TIMEOUT) == 16 and r.ready() and r.successful()
        m = pool.map_async(square, [1, 2], callback=seen.append)
        m.wait(RESULT_TIMEOUT)
        assert m.get() == [1, 4]
        s = pool.starmap_async(pow, [(2, 2)], callback=lambda v: (seen.append(v), done.set()))
        assert s.get(RESULT_TIMEOUT) == [4]
        assert done.is_set()       # callbacks run before get returns
    assert seen == [16, [1, 4], [4]]


def test_the_processes_run_calls_at_the_same_time(shoal_cluster, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    with Pool(2) as pool:
        first, second = pool.apply_async(meet, (a, b)), pool.apply_async(meet, (b, a))
        assert first.get(RESULT_TIMEOUT) and second.get(RESULT_TIMEOUT)


def test_processes_default_to_the_cluster_cpus_one_each(shoal_cluster):
    with Pool() as pool:
        assert pool.map(square, [3]) == [9]
        assert shoal.available_resources().get("CPU", 0) == 0     # two workers, one CPU each
    wait_for(lambda: shoal.available_resources().get("CPU") == 2, timeout=15,
             what="the pool's CPUs to be given back")


# ---------------------------------------------------------- worker processes
def test_the_initializer_runs_once_in_each_process(shoal_cluster):
    with Pool(2, initializer=setup_worker, initargs=("ready",)) as pool:
        seen = pool.map(setup_seen, range(10), chunksize=1)
    assert {(runs, tag) for _, runs, tag in seen} == {(1, "ready")}
    assert os.getpid() not in {p for p, _, _ in seen}


def test_maxtasksperchild_replaces_the_process(shoal_cluster):
    with Pool(1, maxtasksperchild=1) as pool:
        pids = [pool.apply(pid) for _ in range(3)]
    assert len(set(pids)) == 3


def test_a_failing_initializer_fails_pool_creation(shoal_cluster):
    with pytest.raises(ActorDiedError, match="initializer failed"):
        Pool(2, initializer=setup_fails)


def test_a_killed_worker_fails_its_call_and_is_replaced(shoal_cluster):
    with Pool(1) as pool:
        before = pool.apply(pid)
        with pytest.raises(ActorDiedError):
            pool.apply(die)
        assert pool.apply(pid) != before
        assert pool.map(square, [1, 2]) == [1, 4]


# -------------------------------------------------------------------- errors
def test_an_error_in_map_raises_the_users_own_class(shoal_cluster):
    with Pool(2) as pool:
        with pytest.raises(CustomError, match="no 3") as info:
            pool.map(fail_on_three, range(6))
        assert type(info.value) is CustomError
        assert "fail_on_three" in str(info.value.__cause__)     # the worker's traceback
        assert pool.map(fail_on_three, [1, 2]) == [1, 2]          # the pool still works


def test_an_error_in_apply_async_goes_to_error_callback(shoal_cluster):
    errors = []
    with Pool(1) as pool:
        r = pool.apply_async(fail_on_three, (3,), error_callback=errors.append)
        with pytest.raises(CustomError):
            r.get(RESULT_TIMEOUT)
        assert not r.successful()
    assert [type(e) for e in errors] == [CustomError]


def test_an_error_in_imap_comes_at_its_place_and_iteration_goes_on(shoal_cluster):
    with Pool(2) as pool:
        results = pool.imap(fail_on_three, range(5))
        got = []
        for _ in range(5):
            try:
                got.append(results.next(timeout=RESULT_TIMEOUT))
            except CustomError:
                got.append("error")
        assert got == [0, 1, 2, "error", 4]
        with pytest.raises(StopIteration):
            results.next(timeout=RESULT_TIMEOUT)


def test_get_with_a_timeout_raises_timeout_error(shoal_cluster, tmp_path):
    gate = str(tmp_path / "gate")
    with Pool(1) as pool:
        r = pool.apply_async(when_file_exists, (1, gate))
        with pytest.raises(multiprocessing.TimeoutError):
            r.get(timeout=0.05)
        with pytest.raises(builtins.TimeoutError):   # as in Ray
            r.get(timeout=0.05)
        with pytest.raises(ValueError, match="not ready"):
            r.successful()
        touch(gate)
        assert r.get(RESULT_TIMEOUT) == 1


def test_a_failing_callback_does_not_stop_the_pool(shoal_cluster, capsys):
    def bad_callback(_):
        raise RuntimeError("callback bug")
    with Pool(1) as pool:
        pool.apply_async(square, (2,), callback=bad_callback).wait(RESULT_TIMEOUT)
        assert pool.apply(square, (3,)) == 9
    assert "callback bug" in capsys.readouterr().err


def test_an_unpicklable_argument_fails_its_result(shoal_cluster):
    with Pool(1) as pool:
        with pytest.raises(TypeError):
            pool.apply(square, (threading.Lock(),))
        assert pool.apply(square, (5,)) == 25


def test_bad_arguments_are_refused(shoal_cluster):
    with pytest.raises(ValueError):
        Pool(0)
    with pytest.raises(ValueError, match="only 2 CPUs"):
        Pool(3)
    with pytest.raises(TypeError):
        Pool(1, initializer=5)
    with pytest.raises(ValueError):
        Pool(1, maxtasksperchild=0)
    with Pool(1) as pool:
        with pytest.raises(ValueError, match="Chunksize"):
            pool.imap(square, [1], chunksize=0)
        with pytest.raises(NotImplementedError):
            pickle.dumps(pool)


# ----------------------------------------------------------------- lifecycle
def test_a_closed_pool_refuses_work_and_join_waits_for_the_rest(shoal_cluster):
    pool = Pool(2)
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    pending = pool.map_async(square, range(6), chunksize=1)
    pool.close()
    for submit in (lambda: pool.apply_async(square, (1,)), lambda: pool.map(square, [1]),
                   lambda: pool.imap(square, [1]), lambda: pool.starmap(pow, [(1, 1)])):
        with pytest.raises(ValueError, match="Pool not running"):
            submit()
    pool.join()
    assert pending.ready() and pending.get() == [x * x for x in range(6)]


def test_terminate_fails_unfinished_results_instead_of_hanging(shoal_cluster, tmp_path):
    pool = Pool(1)
    stuck = pool.apply_async(when_file_exists, (1, str(tmp_path / "never")))
    queued = pool.imap(square, range(3))
    pool.terminate()
    pool.join()
    with pytest.raises(RuntimeError, match="terminated"):
        stuck.get(RESULT_TIMEOUT)
    with pytest.raises(RuntimeError, match="terminated"):
        list(queued)


def test_leaving_the_with_block_terminates_the_pool(shoal_cluster):
    with Pool(1) as pool:
        worker = pool.apply(pid)
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply(pid)
    wait_for(lambda: not _alive(worker), timeout=15, what="the pool's process to exit")


def test_a_pool_dropped_without_close_stops_its_workers(shoal_cluster):
    pool = Pool(2)
    assert pool.map(square, [2]) == [4]
    del pool
    wait_for(lambda: shoal.available_resources().get("CPU") == 2, timeout=15,
             what="the dropped pool's CPUs to be given back")


def test_results_keep_an_unnamed_pool_alive_until_complete(shoal_cluster):
    assert list(Pool(2).imap(square, range(4))) == [0, 1, 4, 9]
    assert Pool(1).map_async(square, [3]).get(RESULT_TIMEOUT) == [9]
    wait_for(lambda: shoal.available_resources().get("CPU") == 2, timeout=15,
             what="the dropped pools' CPUs to be given back")


def test_the_public_names_exist():
    import shoal.util.multiprocessing as module
    for name in module.__all__:
        assert hasattr(module, name), name


def _alive(p: int) -> bool:
    import psutil
    try:
        return psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
