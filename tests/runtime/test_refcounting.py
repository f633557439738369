"""Reference counting, adversarially: every object is freed once nothing can
reach it any more, and not a moment before.

Two things are observed from the driver:
- the bytes in use in the shared-memory store (``cluster_resources()`` minus
  ``available_resources()``, key ``object_store_memory``); only objects of
  100 KB or more live there, so every array here is larger than that;
- the node's object table (``current_core().node.objects.entries``), which
  must end up empty once every ref is dropped.

Any node request (``available_resources()`` included) applies the driver's
pending ref drops first, so reading the store size is itself a sync point.
"""
from __future__ import annotations

import gc
import os
import signal
import threading
import time

import numpy as np
import pytest

import shoal
from tests.conftest import touch as _touch, wait_for_file as _wait_for_file
from shoal.core import current_core
from shoal.exceptions import ActorDiedError, TaskCancelledError, WorkerCrashedError
from tests.conftest import wait_for

GET_TIMEOUT = 60
BIG = 200_000          # bytes; above the 100 KB inline threshold, so in shared memory


def get(refs, timeout: float = GET_TIMEOUT):
    return shoal.get(refs, timeout=timeout)


def store_used() -> float:
    return (shoal.cluster_resources()["object_store_memory"]
            - shoal.available_resources()["object_store_memory"])


def table() -> dict:
    return current_core().node.objects.entries


def entry(ref):
    return table().get(ref.id if hasattr(ref, "id") else ref)


def in_store(ref) -> bool:
    """The object's value is in the table, held in shared memory."""
    store_used()    # applies the driver's pending ref changes
    e = entry(ref)
    return e is not None and e.value is not None and e.shm_offset is not None


def wait_all_freed(timeout: float = 10.0, what: str = "every object to be freed"):
    """The store is back to empty and the object table holds nothing."""
    gc.collect()

    def clean():
        return store_used() == 0 and len(table()) == 0
    try:
        wait_for(clean, timeout=timeout, what=what)
    except AssertionError:
        with current_core().node.lock:
            left = {k.hex(): (e.refs, e.pins, e.value is not None and e.value[0])
                    for k, e in list(table().items())[:10]}
        raise AssertionError(f"timed out after {timeout} s waiting for {what}: "
                             f"store_used={store_used()}, {len(table())} entries, "
                             f"first: {left}") from None


def wait_freed(oid: bytes, timeout: float = 10.0, what: str = "the object to be freed"):
    gc.collect()

    def gone():
        store_used()        # applies the driver's pending ref changes
        return oid not in table()
    wait_for(gone, timeout=timeout, what=what)


def big_array(seed: int, n: int = BIG) -> np.ndarray:
    return np.full(n, seed % 251, dtype=np.uint8)


# --------------------------------------------------------------- task gates




# --------------------------------------------------------- remote functions
@shoal.remote
def make(seed, n=BIG):
    return np.full(n, seed % 251, dtype=np.uint8)


@shoal.remote
def head_sum(a):
    return int(a[:10].sum())


@shoal.remote
def nested_head_sum(box):
    refs = box["refs"] if isinstance(box, dict) else box
    return sum(int(a[:10].sum()) for a in shoal.get(refs, timeout=GET_TIMEOUT))


@shoal.remote
def plus_one(a):
    return a + 1


# ================================================================ the leak test
def test_ten_thousand_tasks_passing_arrays_leave_the_store_and_table_empty(shoal_cluster):
    """Args by value, explicit puts, results fed to other tasks, results read
    by the driver, refs nested in a dict and borrowed by a task that blocks in
    get on them: after 10k tasks and dropping every ref, nothing is left in
    shared memory or in the object table."""
    assert store_used() == 0 and len(table()) == 0
    expected = got = 0
    tasks = 0
    batch = 0
    peak_entries = 0
    while tasks < 10_000:
        refs = []
        fetched = []
        for i in range(batch * 100, batch * 100 + 100):
            seed = i % 251
            kind = i % 6
            if kind == 0:        # a large argument by value: stored by the driver
                refs.append(head_sum.remote(big_array(seed)))
                tasks += 1
            elif kind == 1:      # one task's large result is another's argument
                refs.append(head_sum.remote(make.remote(seed)))
                tasks += 2
            elif kind == 2:      # an explicit put as the argument
                refs.append(head_sum.remote(shoal.put(big_array(seed))))
                tasks += 1
            elif kind == 3:      # a large result read by the driver
                fetched.append((seed, make.remote(seed)))
                tasks += 1
                continue
            elif kind == 4:      # refs nested in a dict: borrowed by the task
                refs.append(nested_head_sum.remote({"refs": [
                    make.remote(seed), shoal.put(big_array(seed + 1))]}))
                tasks += 2
                expected += ((seed + 1) % 251) * 10
            else:                # a large argument and a large result
                fetched.append((seed + 1, plus_one.remote(big_array(seed))))
                tasks += 1
                continue
            expected += seed * 10
        got += sum(get(refs))
        for seed, ref in fetched:
            arr = get(ref)
            assert arr.shape == (BIG,) and int(arr[0]) == seed and int(arr[-1]) == seed
            del arr
        peak_entries = max(peak_entries, len(table()))
        del refs, fetched, ref
        batch += 1
    assert got == expected
    assert tasks >= 10_000
    # each batch's objects are dropped before the next: the table never grows
    assert peak_entries < 1000, f"the object table reached {peak_entries} entries"
    wait_all_freed(timeout=10, what="10k tasks' objects to be freed")


def test_tasks_taken_back_from_a_worker_still_find_their_function(shoal_cluster):
    """Borrowers blocked in a nested get on results not made yet: their
    workers hand back the tasks queued behind them (some of which carried
    their function's code). Every task must still run, and every object be
    freed afterwards. (Regression: a revoked task took the code with it and
    the function's next task on that worker raised KeyError(function_id).)"""
    for _ in range(10):
        refs = [nested_head_sum.remote([make.remote(i)]) for i in range(200)]
        assert get(refs) == [(i % 251) * 10 for i in range(200)]
    del refs
    wait_all_freed()


def test_nested_gets_with_a_timeout_return_as_soon_as_their_object_is_ready(shoal_cluster):
    """(Regression: a SIGUSR1 nudge handled between select() and the read in
    the worker's get-with-timeout consumed the reply, and the read blocked.)"""
    @shoal.remote
    def chain(i, box):     # one function: revoked tasks never carry new code
        if box is None:
            return i
        return shoal.get(box[0], timeout=60)

    for _ in range(10):
        refs = [chain.remote(i, [chain.remote(i, None)]) for i in range(200)]
        assert get(refs, timeout=10) == list(range(200))


def test_ref_dropped_by_an_idle_driver_is_freed_without_any_further_call(shoal_cluster):
    """Only the node's own timer applies the drop: the condition reads the
    table and allocator directly, never calling the API."""
    node = current_core().node
    ref = shoal.put(big_array(1))
    oid = ref.id
    assert node.allocator.used_bytes >= BIG
    del ref
    wait_for(lambda: oid not in node.objects.entries and node.allocator.used_bytes == 0,
             timeout=2, what="the node to apply the idle driver's dropped ref")


def test_results_dropped_unread_while_tasks_run_are_freed(shoal_cluster):
    """Fire-and-forget: refs dropped at once, results arriving afterwards."""
    for _ in range(3):
        for i in range(200):
            make.remote(i)           # the ref is dropped immediately
    # each result is dropped when it arrives (or its entry when it is made)
    wait_all_freed(timeout=20, what="unread results to be freed")


# ========================================================== borrowed nested refs
@pytest.mark.parametrize("container", ["list", "dict"])
def test_ref_nested_in_an_argument_outlives_the_drivers_ref_until_the_task_ends(
        shoal_cluster, tmp_path, container):
    @shoal.remote
    def borrow(box, started, gate):
        ref = box[0] if isinstance(box, list) else box["ref"]
        _touch(started)
        assert _wait_for_file(gate)
        return int(shoal.get(ref, timeout=GET_TIMEOUT)[-1])

    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    ref = shoal.put(np.arange(BIG // 8, dtype=np.int64))
    oid = ref.id
    box = [ref] if container == "list" else {"ref": ref}
    out = borrow.remote(box, started, gate)
    del ref, box
    gc.collect()
    wait_for(lambda: os.path.exists(started), timeout=30, what="the task to start")
    assert in_store(oid), "freed while a running task borrows it"
    _touch(gate)
    assert get(out) == BIG // 8 - 1
    del out
    wait_freed(oid, what="the borrowed object to be freed after the task ended")
    wait_all_freed()


def test_ref_nested_in_an_argument_survives_while_the_task_waits_for_a_cpu(shoal_cluster,
                                                                            tmp_path):
    """The task holding the nested ref has not started yet: both CPUs are
    busy. The object must still be there when it runs."""
    @shoal.remote
    def block(gate):
        return _wait_for_file(gate)

    @shoal.remote
    def read(box):
        return int(shoal.get(box[0], timeout=GET_TIMEOUT)[5])

    gate = str(tmp_path / "gate")
    blockers = [block.remote(gate) for _ in range(2)]
    ref = shoal.put(np.arange(BIG // 8, dtype=np.int64))
    oid = ref.id
    out = read.remote([ref])
    del ref
    assert in_store(oid)
    _touch(gate)
    assert get(blockers) == [True, True]
    assert get(out) == 5
    del out
    wait_freed(oid)


def test_borrower_passes_the_nested_ref_on_to_a_child_and_returns_first(shoal_cluster,
                                                                       tmp_path):
    """The driver drops its ref, the borrower hands it to a child task and
    finishes before the child runs: the child still reads the value."""
    @shoal.remote
    def child(box, gate):
        assert _wait_for_file(gate)
        return int(shoal.get(box[0], timeout=GET_TIMEOUT)[7])

    @shoal.remote
    def parent(box, gate):
        return [child.remote([box[0]], gate)]      # the child's ref, nested

    gate = str(tmp_path / "gate")
    ref = shoal.put(np.arange(BIG // 8, dtype=np.int64))
    oid = ref.id
    (child_ref,) = get(parent.remote([ref], gate))
    del ref
    assert in_store(oid), "freed while a child task still holds it in its arguments"
    _touch(gate)
    assert get(child_ref) == 7
    del child_ref
    wait_freed(oid)
    wait_all_freed()


def test_ref_kept_in_a_task_workers_global_lives_until_that_worker_dies(shoal_cluster):
    @shoal.remote
    def stash(box):
        import builtins
        builtins._shoal_test_stash = box[0]       # outlives the task, in this process
        return os.getpid()

    ref = shoal.put(big_array(4))
    oid = ref.id
    pid = get(stash.remote([ref]))
    del ref
    assert in_store(oid), "freed while an idle worker still holds a ref to it"
    os.kill(pid, signal.SIGKILL)
    wait_freed(oid, what="the ref held by a killed idle worker to be released")
    wait_all_freed()


def test_the_same_ref_nested_twice_and_passed_directly_is_counted_correctly(shoal_cluster):
    @shoal.remote
    def use(a, box):
        return int(a[3]) + sum(int(shoal.get(r, timeout=GET_TIMEOUT)[3]) for r in box)

    ref = shoal.put(np.arange(BIG // 8, dtype=np.int64))
    outs = [use.remote(ref, [ref, ref, {"again": ref}["again"]]) for _ in range(5)]
    del ref
    assert get(outs) == [12] * 5
    del outs
    wait_all_freed()


# ================================================================= actors
@shoal.remote
class Holder:
    def hold(self, box):
        self.refs = list(box)
        return len(self.refs)

    def read(self, i):
        return int(shoal.get(self.refs[0], timeout=GET_TIMEOUT)[i])

    def drop(self):
        self.refs = []
        return True

    def pid(self):
        return os.getpid()


def test_ref_stored_in_an_actor_keeps_the_object_alive_until_the_actor_drops_it(shoal_cluster):
    h = Holder.remote()
    ref = shoal.put(np.arange(BIG // 8, dtype=np.int64))
    oid = ref.id
    assert get(h.hold.remote([ref])) == 1
    del ref
    gc.collect()
    assert in_store(oid), "freed while an actor holds a ref to it"
    assert get(h.read.remote(100)) == 100
    assert in_store(oid)
    assert get(h.drop.remote()) is True
    wait_freed(oid, what="the object to be freed once the actor dropped its ref")
    assert get(h.pid.remote()) > 0      # the actor itself is fine


def test_ref_stored_in_an_actor_is_freed_when_the_actor_is_killed(shoal_cluster):
    h = Holder.remote()
    ref = shoal.put(np.arange(BIG // 8, dtype=np.int64))
    oid = ref.id
    assert get(h.hold.remote([ref])) == 1
    del ref
    assert in_store(oid)
    shoal.kill(h)
    wait_freed(oid, what="the object held by a killed actor to be freed")
    with pytest.raises(ActorDiedError):
        get(h.read.remote(1))
    del h
    wait_all_freed()


def test_ref_stored_in_an_actor_is_freed_when_its_last_handle_goes(shoal_cluster):
    h = Holder.remote()
    ref = shoal.put(np.arange(BIG // 8, dtype=np.int64))
    oid = ref.id
    assert get(h.hold.remote([ref])) == 1
    del ref, h
    wait_freed(oid, what="the object held by an out-of-scope actor to be freed")
    wait_all_freed()


def test_ref_passed_to_an_actor_constructor_lives_as_long_as_the_actor(shoal_cluster):
    @shoal.remote
    class Owner:
        def __init__(self, box):
            self.ref = box[0]

        def read(self):
            return int(shoal.get(self.ref, timeout=GET_TIMEOUT)[9])

    ref = shoal.put(np.arange(BIG // 8, dtype=np.int64))
    oid = ref.id
    a = Owner.remote([ref])
    del ref
    assert get(a.read.remote()) == 9
    assert in_store(oid)
    del a
    wait_freed(oid, what="the constructor's nested ref to be freed with the actor")
    wait_all_freed()


def test_actor_that_crashes_while_holding_a_ref_releases_it(shoal_cluster):
    h = Holder.remote()
    ref = shoal.put(np.arange(BIG // 8, dtype=np.int64))
    oid = ref.id
    assert get(h.hold.remote([ref])) == 1
    pid = get(h.pid.remote())
    del ref
    assert in_store(oid)
    os.kill(pid, signal.SIGKILL)
    wait_freed(oid, what="the ref of a crashed actor process to be released")
    del h
    wait_all_freed()


def test_restarted_actor_no_longer_holds_the_refs_of_its_previous_life(shoal_cluster):
    h = Holder.options(max_restarts=1).remote()
    ref = shoal.put(np.arange(BIG // 8, dtype=np.int64))
    oid = ref.id
    assert get(h.hold.remote([ref])) == 1
    pid = get(h.pid.remote())
    del ref
    os.kill(pid, signal.SIGKILL)
    wait_freed(oid, what="the dead incarnation's ref to be released")
    new_pid = wait_for(lambda: _pid_if_new(h, pid), timeout=30, what="the restart")
    assert new_pid != pid
    h = None        # the last handle: the actor and everything it held go
    wait_all_freed()


@pytest.mark.parametrize("kind", ["sync", "threaded", "async"])
def test_actor_releases_a_calls_argument_once_the_call_returned(shoal_cluster, kind):
    """(Regression: threaded and async actors sent the ref drops that follow
    a call only with their next message, so an idle actor kept the args.)"""
    if kind == "sync":
        @shoal.remote
        class User:
            def use(self, a):
                return int(a[0])
    elif kind == "threaded":
        @shoal.remote(max_concurrency=2)
        class User:
            def use(self, a):
                return int(a[0])
    else:
        @shoal.remote
        class User:
            async def use(self, a):
                return int(a[0])

    u = User.remote()
    ref = shoal.put(big_array(6))
    oid = ref.id
    assert get(u.use.remote(ref)) == 6
    del ref
    wait_freed(oid, timeout=5, what=f"a {kind} actor's finished call to release its argument")
    assert store_used() == 0
    del u


def test_handle_passed_to_a_task_keeps_the_actor_alive_after_the_driver_drops_its_own(
        shoal_cluster, tmp_path):
    @shoal.remote
    def call_later(box, gate):
        assert _wait_for_file(gate)
        return shoal.get(box[0].read.remote(2), timeout=GET_TIMEOUT)

    h = Holder.remote()
    assert get(h.hold.remote([shoal.put(np.arange(BIG // 8, dtype=np.int64))])) == 1
    gate = str(tmp_path / "gate")
    out = call_later.remote([h], gate)
    del h
    store_used()
    _touch(gate)
    assert get(out) == 2
    del out
    wait_all_freed(what="the actor and its object once the borrowing task ended")


def _pid_if_new(h, old):
    """The actor's pid once a call reaches a new incarnation, else None."""
    try:
        pid = get(h.pid.remote(), timeout=30)
    except ActorDiedError:
        return None
    return pid if pid != old else None


# ======================================================= refs inside results
def test_refs_returned_inside_a_result_stay_alive_until_the_driver_drops_them(shoal_cluster):
    @shoal.remote
    def producer():
        return {"made": make.remote(41), "put": shoal.put(big_array(42))}

    outer = producer.remote()
    box = get(outer)
    del outer
    a, b = get([box["made"], box["put"]])
    assert int(a[0]) == 41 and int(b[0]) == 42
    ids = [box["made"].id, box["put"].id]
    del a, b
    assert all(in_store(i) for i in ids)
    del box
    for oid in ids:
        wait_freed(oid)
    wait_all_freed()


def test_refs_inside_an_unread_result_are_freed_with_it(shoal_cluster):
    @shoal.remote
    def producer():
        return [shoal.put(big_array(i)) for i in range(3)]

    outer = producer.remote()
    shoal.wait([outer], timeout=GET_TIMEOUT)
    assert store_used() >= 3 * BIG
    del outer
    wait_all_freed(what="the inner objects of a dropped result to be freed")


def test_put_inside_a_worker_returned_as_a_ref_reaches_the_driver(shoal_cluster):
    @shoal.remote
    def put_it(seed):
        return shoal.put(big_array(seed))

    outer = put_it.remote(9)
    inner = get(outer)
    assert isinstance(inner, shoal.ObjectRef)
    del outer
    gc.collect()
    store_used()
    arr = get(inner)
    assert arr.shape == (BIG,) and int(arr[0]) == 9
    del arr
    assert in_store(inner)
    del inner
    wait_all_freed(what="the worker's put to be freed after the driver dropped it")


def test_returning_a_borrowed_ref_keeps_it_alive_after_the_driver_drops_its_own(shoal_cluster):
    @shoal.remote
    def pass_back(box):
        return box

    ref = shoal.put(np.arange(BIG // 8, dtype=np.int64))
    oid = ref.id
    back = get(pass_back.remote([ref]))
    del ref
    assert in_store(oid)
    assert int(get(back[0])[11]) == 11
    del back
    wait_freed(oid)
    wait_all_freed()


def test_ref_nested_in_a_put_lives_as_long_as_the_outer_object(shoal_cluster):
    inner = shoal.put(big_array(8))
    inner_id = inner.id
    outer = shoal.put({"inner": inner})
    del inner
    assert in_store(inner_id), "freed while another object holds a ref to it"
    again = get(outer)["inner"]
    assert int(get(again)[0]) == 8
    del again
    assert in_store(inner_id)
    del outer
    wait_freed(inner_id, what="the inner object to be freed with the outer one")
    wait_all_freed()


def test_ref_nested_in_a_workers_put_lives_as_long_as_the_outer_object(shoal_cluster):
    @shoal.remote
    def wrap(box):
        return shoal.put([box[0], shoal.put(big_array(3))])

    ref = shoal.put(big_array(2))
    outer_ref = get(wrap.remote([ref]))
    del ref
    a, b = get(outer_ref)
    assert int(get(a)[0]) == 2 and int(get(b)[0]) == 3
    del a, b
    assert store_used() >= 2 * BIG
    del outer_ref
    wait_all_freed()


def test_a_zero_copy_view_keeps_its_object_alive_after_every_ref_is_gone(shoal_cluster):
    ref = make.remote(77)
    oid = ref.id
    arr = get(ref)
    del ref
    gc.collect()
    assert in_store(oid), "freed while a zero-copy view of it is alive"
    assert int(arr[-1]) == 77
    del arr
    wait_freed(oid)


# ==================================================================== failures
def test_argument_of_a_task_that_raises_is_freed(shoal_cluster):
    @shoal.remote(max_retries=0)
    def fail(a, box):
        raise ValueError(f"boom {a[0]}")

    ref1 = shoal.put(big_array(1))
    ref2 = shoal.put(big_array(2))
    out = fail.remote(ref1, [ref2])
    del ref1, ref2
    with pytest.raises(ValueError, match="boom 1"):
        get(out)
    del out
    wait_all_freed(what="the arguments of a failed task to be freed")


def test_argument_of_a_task_retried_on_exceptions_is_freed_after_the_last_attempt(
        shoal_cluster, tmp_path):
    @shoal.remote(max_retries=2, retry_exceptions=True)
    def flaky(a, box, path):
        with open(path, "a") as f:
            f.write("x")
        raise RuntimeError("again")

    path = str(tmp_path / "attempts")
    out = flaky.remote(shoal.put(big_array(1)), [shoal.put(big_array(2))], path)
    with pytest.raises(RuntimeError, match="again"):
        get(out)
    assert open(path).read() == "xxx"
    del out
    wait_all_freed()


def test_argument_of_a_task_whose_worker_crashes_is_freed(shoal_cluster):
    @shoal.remote(max_retries=0)
    def crash(a, box):
        os.kill(os.getpid(), signal.SIGKILL)

    out = crash.remote(shoal.put(big_array(1)), [shoal.put(big_array(2))])
    with pytest.raises(WorkerCrashedError):
        get(out)
    del out
    wait_all_freed(what="the arguments of a crashed task to be freed")


def test_objects_a_crashing_worker_put_and_borrowed_are_freed(shoal_cluster):
    """The worker made its own objects and borrowed one, then died: nothing
    it held survives it."""
    @shoal.remote(max_retries=0)
    def put_then_crash(box):
        keep = [shoal.put(big_array(i)) for i in range(3)]
        keep.append(box[0])
        shoal.get(keep, timeout=GET_TIMEOUT)   # a request: the REFS reach the node
        os.kill(os.getpid(), signal.SIGKILL)

    out = put_then_crash.remote([shoal.put(big_array(5))])
    with pytest.raises(WorkerCrashedError):
        get(out)
    del out
    wait_all_freed(what="a crashed worker's puts to be freed")


def test_result_memory_of_a_worker_that_dies_before_reporting_it_is_reclaimed(shoal_cluster):
    """(Regression: an allocation not yet named in a DONE/PUT leaked for good.)"""
    class KillWhilePickled:
        def __reduce__(self):
            os.kill(os.getpid(), signal.SIGKILL)

    @shoal.remote(num_returns=2, max_retries=0)
    def two():
        # the first result is written to shared memory before the second is pickled
        return np.ones(3 * BIG, dtype=np.uint8), KillWhilePickled()

    a, b = two.remote()
    with pytest.raises(WorkerCrashedError):
        get(a)
    del a, b
    wait_all_freed(timeout=5, what="the dead worker's allocation to be reclaimed")


def test_argument_of_a_cancelled_queued_task_is_freed(shoal_cluster, tmp_path):
    @shoal.remote
    def block(gate):
        return _wait_for_file(gate)

    gate = str(tmp_path / "gate")
    blockers = [block.remote(gate) for _ in range(2)]
    outs = [head_sum.remote(shoal.put(big_array(3))) for _ in range(4)]
    assert store_used() >= 4 * BIG
    for o in outs:
        shoal.cancel(o)
    for o in outs:
        with pytest.raises(TaskCancelledError):
            get(o)
    del outs, o
    _touch(gate)
    assert get(blockers) == [True, True]
    del blockers
    wait_all_freed(what="the arguments of cancelled tasks to be freed")


@pytest.mark.parametrize("recursive", [True, False])
@pytest.mark.parametrize("get_timeout", [None, 60])
def test_task_cancelled_while_blocked_in_a_get_stops_at_once_and_releases_its_objects(
        shoal_cluster, tmp_path, recursive, get_timeout):
    """recursive=False: the child keeps running, so only interrupting the
    get itself (as Ray does) ends the parent. (Regression: for a while the
    CANCEL was read inside the get but only acted on once the get returned.)"""
    @shoal.remote
    def never(gate):
        return _wait_for_file(gate, 60)

    @shoal.remote
    def waiter(box, started, gate):
        return shoal.get(never.remote(gate), timeout=get_timeout)

    def blocked_in_get(ref) -> bool:
        node = current_core().node
        with node.lock:
            rec = node.tasks.get(ref.id[:12])
            return rec is not None and rec.worker is not None and rec.worker.blocked > 0

    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    out = waiter.remote([shoal.put(big_array(1))], started, gate)
    wait_for(lambda: blocked_in_get(out), timeout=30, what="the task to block in get")
    assert store_used() >= BIG
    t0 = time.monotonic()
    shoal.cancel(out, recursive=recursive)
    try:
        with pytest.raises(TaskCancelledError):
            get(out, timeout=15)
        assert time.monotonic() - t0 < 10, "cancelling a task blocked in get took too long"
    finally:
        _touch(gate)          # let the child finish
    out = None
    wait_all_freed()


def test_argument_of_a_call_to_a_dead_actor_is_freed(shoal_cluster):
    h = Holder.remote()
    shoal.kill(h)
    out = h.hold.remote([shoal.put(big_array(4))])
    with pytest.raises(ActorDiedError):
        get(out)
    del out, h
    wait_all_freed()


def test_calls_queued_on_an_actor_that_dies_release_their_arguments(shoal_cluster, tmp_path):
    @shoal.remote(max_restarts=0)
    class Slow:
        def wait(self, gate):
            return _wait_for_file(gate, 30)

        def use(self, a):
            return int(a[0])

        def pid(self):
            return os.getpid()

    s = Slow.remote()
    pid = get(s.pid.remote())
    first = s.wait.remote(str(tmp_path / "never"))
    queued = [s.use.remote(shoal.put(big_array(i))) for i in range(5)]
    assert store_used() >= 5 * BIG
    os.kill(pid, signal.SIGKILL)
    for r in [first] + queued:
        with pytest.raises(ActorDiedError):
            get(r)
    del first, queued, r, s
    wait_all_freed(what="queued actor calls' arguments to be freed")


# ================================================================= generators
@shoal.remote
def stream_arrays(n, gate=None):
    for i in range(n):
        if gate is not None and i == 3:
            assert _wait_for_file(gate)
        yield big_array(i)


def test_generator_dropped_mid_stream_frees_every_item(shoal_cluster):
    gen = stream_arrays.remote(10)
    first = next(gen)
    second = next(gen)
    assert int(get(first)[0]) == 0 and int(get(second)[0]) == 1
    done = gen.completed()
    get(done)                        # every item has been produced
    assert store_used() >= 10 * BIG
    del gen, first, second, done
    wait_all_freed(what="a dropped generator's items to be freed")


def test_generator_dropped_while_still_running_frees_the_items_made_later(shoal_cluster,
                                                                          tmp_path):
    gate = str(tmp_path / "gate")
    gen = stream_arrays.remote(8, gate)
    first = next(gen)
    assert int(get(first)[0]) == 0
    done = gen.completed()
    del gen, first
    gc.collect()
    store_used()
    _touch(gate)
    assert get(done) == 8            # the completion value is the item count
    del done
    wait_all_freed(what="items yielded after the generator was dropped to be freed")


def test_items_kept_from_a_dropped_generator_stay_alive(shoal_cluster):
    gen = stream_arrays.remote(6)
    kept = [next(gen) for _ in range(3)]
    get(gen.completed())
    del gen
    gc.collect()
    store_used()
    assert [int(get(r)[0]) for r in kept] == [0, 1, 2]
    assert all(in_store(r) for r in kept)
    del kept
    wait_all_freed()


def test_generator_fully_consumed_and_dropped_frees_every_item(shoal_cluster):
    gen = stream_arrays.remote(12)
    vals = [int(get(r)[0]) for r in gen]
    assert vals == list(range(12))
    del gen
    wait_all_freed()


def test_retried_streaming_generator_frees_the_items_it_yields_again(shoal_cluster, tmp_path):
    """(Regression: the re-yielded items were pinned again and never unpinned.)"""
    @shoal.remote(max_retries=1)
    def crash_once(flag, n):
        for i in range(n):
            if i == 4 and not os.path.exists(flag):
                _touch(flag)
                os.kill(os.getpid(), signal.SIGKILL)
            yield big_array(i)

    gen = crash_once.remote(str(tmp_path / "flag"), 8)
    seen = []
    for r in gen:
        seen.append(int(get(r)[0]))
        del r
    assert seen == list(range(8))
    del gen
    wait_all_freed(timeout=5, what="a replayed generator's items to be freed")


def test_generator_whose_consuming_task_crashes_frees_its_items(shoal_cluster, tmp_path):
    @shoal.remote(max_retries=0)
    def consume(n, started):
        gen = stream_arrays.remote(n)
        first = next(gen)
        shoal.get(first, timeout=GET_TIMEOUT)
        shoal.get(gen.completed(), timeout=GET_TIMEOUT)     # every item is made
        _touch(started)
        os.kill(os.getpid(), signal.SIGKILL)

    started = str(tmp_path / "started")
    out = consume.remote(6, started)
    with pytest.raises(WorkerCrashedError):
        get(out)
    assert os.path.exists(started)
    del out
    wait_all_freed(what="the items of a crashed consumer's generator to be freed")


def _run_threads(target, n: int) -> None:
    """Run ``target(t)`` on ``n`` threads at once; fail if any hangs."""
    threads = [threading.Thread(target=target, args=(t,)) for t in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=90)
    assert not any(th.is_alive() for th in threads), "a thread hung"


# =============================================================== concurrency
def test_concurrent_large_puts_and_gets_from_four_driver_threads(shoal_cluster):
    errors: list = []
    barrier = threading.Barrier(4)

    def worker(t):
        try:
            barrier.wait(timeout=30)
            for i in range(50):
                seed = t * 50 + i
                arr = np.full(BIG + 8 * seed, seed % 251, dtype=np.uint8)
                ref = shoal.put(arr)
                out = shoal.get(ref, timeout=GET_TIMEOUT)
                if out.shape != arr.shape or int(out[0]) != seed % 251 or int(out[-1]) != seed % 251:
                    errors.append(f"thread {t} object {i}: wrong value")
                if i % 5 == 0:    # and through a task
                    s = shoal.get(head_sum.remote(ref), timeout=GET_TIMEOUT)
                    if s != (seed % 251) * 10:
                        errors.append(f"thread {t} object {i}: task read {s}")
                del arr, ref, out
        except BaseException as e:   # reported below
            errors.append(f"thread {t}: {e!r}")

    _run_threads(worker, 4)
    assert errors == []
    wait_all_freed(what="objects of 4 threads to be freed")


def test_concurrent_puts_held_by_threads_are_never_freed_early(shoal_cluster):
    """Each thread keeps all of its refs until the end, while the others
    churn: every kept value must still read right."""
    errors: list = []

    def worker(t):
        try:
            kept = [(i, shoal.put(big_array(t * 50 + i))) for i in range(50)]
            for _ in range(20):     # churn: objects made and dropped at once
                shoal.get(shoal.put(big_array(250)), timeout=GET_TIMEOUT)
            for i, ref in kept:
                v = shoal.get(ref, timeout=GET_TIMEOUT)
                if int(v[0]) != (t * 50 + i) % 251 or int(v[-1]) != (t * 50 + i) % 251:
                    errors.append(f"thread {t} object {i} changed")
        except BaseException as e:
            errors.append(f"thread {t}: {e!r}")

    _run_threads(worker, 4)
    assert errors == []
    wait_all_freed()


def test_threads_inside_a_task_put_and_get_concurrently(shoal_cluster):
    @shoal.remote
    def threaded(n):
        sums = [None] * 4

        def work(t):
            acc = 0
            for i in range(n):
                ref = shoal.put(big_array(t * n + i))
                acc += int(shoal.get(ref, timeout=GET_TIMEOUT)[0])
            sums[t] = acc

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=GET_TIMEOUT)
        return sums

    n = 200
    out = threaded.remote(n)
    assert get(out, timeout=20) == [sum((t * n + i) % 251 for i in range(n))
                                    for t in range(4)]
    del out
    wait_all_freed()
