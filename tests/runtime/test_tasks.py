"""Remote functions: submission, arguments, results, nesting, wait, options."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

import shoal
from tests.conftest import touch, wait_for, wait_for_file
from shoal.exceptions import GetTimeoutError


@shoal.remote
def add(a, b=0):
    return a + b


@shoal.remote
def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


def test_a_task_returns_its_result(shoal_cluster):
    assert shoal.get(add.remote(1, 2)) == 3
    assert shoal.get(add.remote(1, b=5)) == 6


def test_get_of_a_list_keeps_order(shoal_cluster):
    refs = [add.remote(i, i) for i in range(50)]
    assert shoal.get(refs) == [2 * i for i in range(50)]


def test_top_level_refs_are_resolved_before_the_task_runs(shoal_cluster):
    x = add.remote(1, 1)
    y = add.remote(x, b=add.remote(10))
    assert shoal.get(y) == 12


def test_refs_nested_in_arguments_travel_as_refs(shoal_cluster):
    @shoal.remote
    def first_of(refs):
        assert isinstance(refs[0], shoal.ObjectRef)
        return shoal.get(refs[0])

    inner = shoal.put("payload")
    assert shoal.get(first_of.remote([inner])) == "payload"


def test_refs_returned_inside_values_stay_usable(shoal_cluster):
    @shoal.remote
    def make():
        return {"ref": add.remote(20, 22)}

    out = shoal.get(make.remote())
    assert shoal.get(out["ref"]) == 42


def test_tasks_submit_tasks_and_wait_on_them(shoal_cluster):
    @shoal.remote
    def parent(n):
        return sum(shoal.get([add.remote(i) for i in range(n)]))

    assert shoal.get(parent.remote(20)) == sum(range(20))


def test_nested_gets_deeper_than_the_cpu_count_do_not_deadlock(shoal_cluster):
    @shoal.remote
    def depth(d):
        return 0 if d == 0 else 1 + shoal.get(depth.remote(d - 1))

    assert shoal.get(depth.remote(6), timeout=60) == 6


def test_functions_defined_in_a_test_body_are_shipped_by_value(shoal_cluster):
    factor = 7

    def local(x):
        return x * factor

    f = shoal.remote(local)
    assert shoal.get(f.remote(6)) == 42


def test_classes_defined_locally_travel_as_arguments_and_results(shoal_cluster):
    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

    @shoal.remote
    def mirror(p):
        return Point(p.y, p.x)

    q = shoal.get(mirror.remote(Point(1, 2)))
    assert (q.x, q.y) == (2, 1)


def test_num_returns_splits_the_result(shoal_cluster):
    @shoal.remote(num_returns=3)
    def three():
        return 1, 2, 3

    refs = three.remote()
    assert len(refs) == 3
    assert shoal.get(refs) == [1, 2, 3]


def test_num_returns_mismatch_is_a_clear_error(shoal_cluster):
    @shoal.remote(num_returns=2)
    def one():
        return [1, 2, 3]

    with pytest.raises(ValueError, match="num_returns=2"):
        shoal.get(one.remote()[0])


def test_options_override_per_call(shoal_cluster):
    refs = add.options(num_returns=1, num_cpus=0.5).remote(2, 3)
    assert shoal.get(refs) == 5


def test_wait_returns_ready_first_and_respects_timeout(shoal_cluster):
    fast = sleep_then.remote(0, "fast")
    slow = sleep_then.remote(30, "slow")
    ready, not_ready = shoal.wait([slow, fast], num_returns=1, timeout=20)
    assert ready == [fast] and not_ready == [slow]
    ready, not_ready = shoal.wait([slow], num_returns=1, timeout=0.1)
    assert ready == [] and not_ready == [slow]
    shoal.cancel(slow, force=True)


def test_wait_with_all_ready_returns_everything(shoal_cluster):
    refs = [add.remote(i) for i in range(5)]
    shoal.get(refs)
    ready, rest = shoal.wait(refs, num_returns=5)
    assert ready == refs and rest == []


def test_get_timeout_raises_get_timeout_error(shoal_cluster):
    ref = sleep_then.remote(30, None)
    with pytest.raises(GetTimeoutError):
        shoal.get(ref, timeout=0.2)
    assert isinstance(GetTimeoutError(), TimeoutError)
    shoal.cancel(ref, force=True)


def test_await_ref_and_future(shoal_cluster):
    async def main():
        return await add.remote(40, 2)

    assert asyncio.run(main()) == 42
    assert add.remote(1, 1).future().result(timeout=30) == 2


def test_put_and_get_small_and_large_values(shoal_cluster):
    assert shoal.get(shoal.put({"a": [1, 2]})) == {"a": [1, 2]}
    arr = np.arange(2_000_000, dtype=np.float64)
    out = shoal.get(shoal.put(arr))
    np.testing.assert_array_equal(out, arr)


def test_many_tasks_complete(shoal_cluster):
    refs = [add.remote(i, 1) for i in range(3000)]
    assert sum(shoal.get(refs)) == sum(range(1, 3001))


@shoal.remote
def rendezvous(me, other, timeout=30):
    """Announce ``me`` and wait for ``other``: only succeeds if both run at once."""
    touch(me)
    return wait_for_file(other, timeout)


def test_tasks_run_in_parallel_on_the_cpus(shoal_cluster, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert shoal.get([rendezvous.remote(a, b), rendezvous.remote(b, a)], timeout=60) == [True, True]


@shoal.remote
def long_until(path, timeout=60):
    wait_for_file(path, timeout)
    return "long"


def test_short_tasks_do_not_wait_behind_a_long_one(shoal_cluster, tmp_path):
    release = tmp_path / "release"
    long = long_until.remote(str(release))
    shorts = [add.remote(i) for i in range(40)]
    ready, _ = shoal.wait(shorts, num_returns=len(shorts), timeout=60)
    still_running, _ = shoal.wait([long], timeout=0)
    release.touch()
    assert len(ready) == len(shorts)        # every short task finished...
    assert still_running == []              # ...while the long one still ran
    assert shoal.get(long, timeout=60) == "long"


def test_runtime_context_inside_a_task(shoal_cluster):
    @shoal.remote
    def ctx():
        c = shoal.get_runtime_context()
        return c.get_task_id(), c.get_job_id(), c.get_node_id(), c.get_assigned_resources()

    task_id, job_id, node_id, assigned = shoal.get(ctx.remote())
    driver = shoal.get_runtime_context()
    assert task_id is not None and job_id == driver.get_job_id()
    assert node_id == driver.get_node_id()
    assert assigned == {"CPU": 1.0}


def test_auto_init_on_first_use():
    try:
        assert not shoal.is_initialized()
        assert shoal.get(add.remote(1, 1)) == 2
        assert shoal.is_initialized()
    finally:
        shoal.shutdown()


def test_extra_workers_started_for_blocked_tasks_retire_when_idle(monkeypatch):
    from tests.conftest import wait_for, worker_children
    monkeypatch.setenv("SHOAL_IDLE_WORKER_TIMEOUT_S", "0.5")
    shoal.init(num_cpus=2)
    try:
        @shoal.remote
        def depth(d):
            return 0 if d == 0 else 1 + shoal.get(depth.remote(d - 1))

        assert shoal.get(depth.remote(5), timeout=60) == 5
        assert len(worker_children()) > 2
        wait_for(lambda: len(worker_children()) == 2, timeout=30,
                 what="extra idle workers to exit")
        assert shoal.get(add.remote(1, 1)) == 2
    finally:
        shoal.shutdown()


@pytest.mark.cluster(num_cpus=2)
def test_nested_submitters_take_turns(shoal_cluster, tmp_path):
    """A parent with a long backlog of children does not hold back a second
    parent's few children: submitters take turns for the workers."""
    @shoal.remote
    def leaf(tag, gate):
        wait_for_file(gate)
        return tag

    @shoal.remote(num_cpus=0)
    def parent(tag, n, gate, submitted):
        refs = [leaf.remote(tag, gate) for _ in range(n)]
        touch(submitted)
        return shoal.get(refs)

    gate = str(tmp_path / "gate")
    big = parent.remote("a", 300, gate, str(tmp_path / "a"))
    wait_for(lambda: shoal.available_resources().get("CPU", 0) == 0)
    small = parent.remote("b", 6, gate, str(tmp_path / "b"))
    assert wait_for_file(str(tmp_path / "b"))     # both backlogs are queued
    touch(gate)
    assert shoal.get(small, timeout=60) == ["b"] * 6
    done, _ = shoal.wait([big], timeout=0)
    assert not done, "the small parent's children waited behind the whole backlog"
    assert shoal.get(big, timeout=60) == ["a"] * 300
