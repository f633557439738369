"""Actors, as Ray users know them: ``@remote`` classes, handles, method calls,
concurrency (threaded and async), names and namespaces, lifetimes, failure
and restart, and the errors each of these gives.

Actor classes used by reference are defined at module level (workers import
this module); a few are defined inside tests to check that classes shipped
by value work too.
"""
from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading
import time

import psutil
import pytest

import shoal
from shoal.exceptions import (ActorDiedError, ActorError, InfeasibleTaskError, TaskError,
                              WorkerCrashedError)

try:
    from conftest import wait_for
except ImportError:   # pragma: no cover - depends on how pytest set sys.path
    from tests.conftest import wait_for

GET_TIMEOUT = 30


# --------------------------------------------------------------------- helpers
def process_alive(pid: int) -> bool:
    """True while ``pid`` is a running (not zombie) process."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def get(refs, timeout: float = GET_TIMEOUT):
    return shoal.get(refs, timeout=timeout)


class CustomError(Exception):
    """A user exception class; errors from actor methods must still be one."""


# ------------------------------------------------------------ actor classes
@shoal.remote
class Counter:
    def __init__(self, start: int = 0):
        self.value = start
        self.log = []

    def increment(self, by: int = 1) -> int:
        self.value += by
        return self.value

    def read(self) -> int:
        return self.value

    def record(self, item):
        self.log.append(item)
        return item

    def get_log(self) -> list:
        return list(self.log)

    def pid(self) -> int:
        return os.getpid()

    def fail(self, message: str):
        raise CustomError(message)

    def actor_id(self):
        return shoal.get_runtime_context().get_actor_id()

    def was_reconstructed(self) -> bool:
        return shoal.get_runtime_context().was_current_actor_reconstructed

    @shoal.method(num_returns=2)
    def value_and_double(self):
        return self.value, self.value * 2

    def triple(self):
        return self.value, self.value + 1, self.value + 2

    def quit(self):
        shoal.actor.exit_actor()

    def gpu_ids(self):
        return shoal.get_gpu_ids()


@shoal.remote
class Forwarder:
    """Holds another actor's handle and calls it."""

    def __init__(self, target=None):
        self.target = target

    def forward_increment(self, by: int) -> int:
        return shoal.get(self.target.increment.remote(by), timeout=GET_TIMEOUT)

    def increment_via(self, handle, by: int) -> int:
        return shoal.get(handle.increment.remote(by), timeout=GET_TIMEOUT)


class Rendezvous:
    """Made threaded with .options(max_concurrency=N)."""

    def __init__(self, parties: int):
        self.barrier = threading.Barrier(parties, timeout=15)
        self.event = threading.Event()
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0

    def arrive(self, i):
        self.barrier.wait()   # raises BrokenBarrierError unless `parties` calls overlap
        return i

    def wait_for_release(self) -> bool:
        return self.event.wait(timeout=15)

    def release(self) -> str:
        self.event.set()
        return "released"

    def busy(self, seconds: float):
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(seconds)   # simulated work
        with self.lock:
            self.active -= 1

    def peak_concurrency(self) -> int:
        return self.max_active

    def thread_name(self) -> str:
        return threading.current_thread().name


ThreadedRendezvous = shoal.remote(Rendezvous)


@shoal.remote
class AsyncGate:
    def __init__(self):
        self.event = asyncio.Event()
        self.arrived = 0

    async def wait_until_open(self, timeout: float = 15) -> str:
        await asyncio.wait_for(self.event.wait(), timeout=timeout)
        return "passed"

    async def open(self) -> str:
        self.event.set()
        return "opened"

    async def arrive_and_wait_for(self, parties: int) -> int:
        """Returns once ``parties`` calls have arrived: only possible if they overlap."""
        self.arrived += 1
        deadline = time.monotonic() + 15
        while self.arrived < parties:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.arrived} of {parties} calls overlapped")
            await asyncio.sleep(0.01)
        return self.arrived

    async def own_task_id(self, parties: int) -> tuple:
        """This call's task id before and after it overlaps the others."""
        before = shoal.get_runtime_context().get_task_id()
        await self.arrive_and_wait_for(parties)
        return before, shoal.get_runtime_context().get_task_id()

    async def await_ref(self, boxed_refs: list):
        return await boxed_refs[0]

    async def await_many(self, boxed_refs: list):
        return list(await asyncio.gather(*boxed_refs))

    async def call_other(self, other, by: int):
        return await other.increment.remote(by)

    async def pid(self) -> int:
        return os.getpid()

    async def quit(self):
        shoal.actor.exit_actor()


@shoal.remote
class BrokenInit:
    def __init__(self):
        raise RuntimeError("constructor exploded on purpose")

    def ping(self):
        return "pong"


@shoal.remote
class CrashOnce:
    """A method that SIGKILLs its own process the first time it runs."""

    def __init__(self):
        self.inits = 1

    def crash_the_first_time(self, marker: str):
        if not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return "survived", os.getpid()

    def pid(self) -> int:
        return os.getpid()


@shoal.remote
def call_counter_from_task(counter, times: int) -> list:
    return shoal.get([counter.increment.remote() for _ in range(times)], timeout=GET_TIMEOUT)


@shoal.remote
def slow_value(value, seconds: float):
    time.sleep(seconds)   # simulated work
    return value


@shoal.remote
def failing_task():
    raise IndexError("upstream task failed")


@shoal.remote
def actor_id_in_task():
    return shoal.get_runtime_context().get_actor_id()


@shoal.remote
def increment_all(boxed: dict) -> list:
    return shoal.get([h.increment.remote() for h in boxed["handles"]], timeout=GET_TIMEOUT)


@shoal.remote
def make_counter_in_task(start: int):
    c = Counter.remote(start)
    shoal.get(c.increment.remote(), timeout=GET_TIMEOUT)
    return c


@shoal.remote
def increment_named(name: str) -> int:
    return shoal.get(shoal.get_actor(name).increment.remote(), timeout=GET_TIMEOUT)


@shoal.remote
class AsyncBusy:
    def __init__(self):
        self.active = 0
        self.peak = 0

    async def busy(self, seconds: float):
        self.active += 1
        self.peak = max(self.peak, self.active)
        await asyncio.sleep(seconds)   # simulated work
        self.active -= 1

    async def peak_concurrency(self) -> int:
        return self.peak


@pytest.fixture
def no_worker_retirement(monkeypatch):
    """Idle workers stay: no background worker exits to wake the node up.
    List it before ``shoal_cluster`` so it applies to that cluster."""
    monkeypatch.setenv("SHOAL_IDLE_WORKER_TIMEOUT_S", "600")


# ------------------------------------------------------------ basic calls
def test_actor_keeps_state_between_calls(shoal_cluster):
    c = Counter.remote(10)
    assert get(c.increment.remote()) == 11
    assert get(c.increment.remote(5)) == 16
    assert get(c.read.remote()) == 16


def test_calls_from_one_caller_run_in_submission_order(shoal_cluster):
    c = Counter.remote()
    refs = [c.record.remote(i) for i in range(300)]
    assert get(refs) == list(range(300))
    assert get(c.get_log.remote()) == list(range(300))


def test_call_waiting_on_an_argument_keeps_later_calls_behind_it(shoal_cluster):
    c = Counter.remote()
    slow = slow_value.remote("slow", 0.5)
    first = c.record.remote(slow)       # waits for its argument
    second = c.record.remote("fast")    # ready at once, but submitted later
    assert get([first, second]) == ["slow", "fast"]
    assert get(c.get_log.remote()) == ["slow", "fast"]


def test_actor_class_defined_inside_a_test_works(shoal_cluster):
    @shoal.remote
    class Local:
        def __init__(self, greeting):
            self.greeting = greeting

        def greet(self, name):
            return f"{self.greeting}, {name}"

    a = Local.remote("hello")
    assert get(a.greet.remote("shoal")) == "hello, shoal"


def test_object_refs_passed_to_methods_are_resolved(shoal_cluster):
    c = Counter.remote()
    assert get(c.increment.remote(shoal.put(7))) == 7
    assert get(c.increment.remote(slow_value.remote(3, 0.0))) == 10


def test_keyword_arguments_reach_init_and_methods(shoal_cluster):
    c = Counter.remote(start=3)
    assert get(c.increment.remote(by=4)) == 7


def test_object_ref_passed_to_init_is_resolved(shoal_cluster):
    c = Counter.remote(slow_value.remote(20, 0.1))
    assert get(c.read.remote()) == 20


def test_large_values_travel_to_and_from_an_actor(shoal_cluster):
    import numpy as np
    c = Counter.remote()
    big = np.arange(1_000_000, dtype=np.int64)    # 8 MB, through shared memory
    assert np.array_equal(get(c.record.remote(big)), big)


def test_actor_created_inside_a_task_is_usable_from_the_driver(shoal_cluster):
    c = get(make_counter_in_task.remote(10))
    assert get(c.increment.remote()) == 12


def test_get_actor_works_inside_a_task(shoal_cluster):
    c = Counter.options(name="found-from-task").remote()
    assert get(increment_named.remote("found-from-task")) == 1
    assert get(c.read.remote()) == 1


@pytest.mark.cluster(namespace="team-ns")
def test_named_actor_in_the_namespace_given_to_init(shoal_cluster):
    assert shoal.get_runtime_context().namespace == "team-ns"
    c = Counter.options(name="in-init-ns").remote(5)
    assert get(shoal.get_actor("in-init-ns").read.remote()) == 5
    assert get(shoal.get_actor("in-init-ns", namespace="team-ns").read.remote()) == 5
    assert get(increment_named.remote("in-init-ns")) == 6
    del c


def test_many_actors_live_at_once_each_with_its_own_state(shoal_cluster):
    counters = [Counter.remote(i * 100) for i in range(5)]
    assert get([c.increment.remote() for c in counters]) == [1, 101, 201, 301, 401]
    pids = get([c.pid.remote() for c in counters])
    assert len(set(pids)) == 5, "each actor runs in its own process"


# ------------------------------------------------------- handles passed around
def test_actor_handle_passed_to_a_task_can_call_the_actor(shoal_cluster):
    c = Counter.remote()
    assert get(call_counter_from_task.remote(c, 3)) == [1, 2, 3]
    assert get(c.read.remote()) == 3


def test_actor_handles_nested_in_arguments_can_be_called(shoal_cluster):
    counters = [Counter.remote(i) for i in range(3)]
    assert get(increment_all.remote({"handles": counters})) == [1, 2, 3]


def test_actor_handle_passed_to_another_actor_constructor_can_call_it(shoal_cluster):
    c = Counter.remote()
    f = Forwarder.remote(c)
    assert get(f.forward_increment.remote(4)) == 4
    assert get(f.forward_increment.remote(1)) == 5
    assert get(c.read.remote()) == 5


def test_actor_handle_passed_to_another_actor_method_can_call_it(shoal_cluster):
    c = Counter.remote()
    f = Forwarder.remote()
    assert get(f.increment_via.remote(c, 2)) == 2
    assert get(c.increment.remote()) == 3


def test_actor_handle_kept_by_another_actor_keeps_the_actor_alive(shoal_cluster):
    c = Counter.remote()
    f = Forwarder.remote(c)
    pid = get(c.pid.remote())
    del c
    gc.collect()
    # several rounds of work let the driver's dropped refs reach the node
    for by in (1, 2, 3):
        assert get(f.forward_increment.remote(by)) in (1, 3, 6)
    assert process_alive(pid)


# -------------------------------------------------------------- concurrency
def test_threaded_actor_runs_calls_concurrently(shoal_cluster):
    r = ThreadedRendezvous.options(max_concurrency=3).remote(3)
    refs = [r.arrive.remote(i) for i in range(3)]
    assert get(refs) == [0, 1, 2]


def test_threaded_actor_call_can_release_calls_waiting_on_it(shoal_cluster):
    r = ThreadedRendezvous.options(max_concurrency=4).remote(1)
    waiters = [r.wait_for_release.remote() for _ in range(3)]
    assert get(r.release.remote()) == "released"
    assert get(waiters) == [True, True, True]


def test_threaded_actor_runs_calls_off_the_main_thread(shoal_cluster):
    r = ThreadedRendezvous.options(max_concurrency=2).remote(1)
    assert get(r.thread_name.remote()) != "MainThread"


def test_default_actor_runs_one_call_at_a_time(shoal_cluster):
    r = ThreadedRendezvous.remote(1)
    get([r.busy.remote(0.05) for _ in range(6)])
    assert get(r.peak_concurrency.remote()) == 1


def test_threaded_actor_never_exceeds_max_concurrency(shoal_cluster):
    r = ThreadedRendezvous.options(max_concurrency=2).remote(1)
    get([r.busy.remote(0.1) for _ in range(8)])
    assert get(r.peak_concurrency.remote()) == 2


def test_async_actor_runs_calls_concurrently(shoal_cluster):
    g = AsyncGate.remote()
    refs = [g.arrive_and_wait_for.remote(4) for _ in range(4)]
    assert get(refs) == [4, 4, 4, 4]


def test_overlapping_async_calls_each_see_their_own_task(shoal_cluster):
    g = AsyncGate.remote()
    ids = get([g.own_task_id.remote(3) for _ in range(3)])
    assert all(before == after for before, after in ids), ids
    assert len({before for before, _ in ids}) == 3


def test_async_actor_call_can_release_calls_waiting_on_it(shoal_cluster):
    g = AsyncGate.remote()
    waiters = [g.wait_until_open.remote() for _ in range(3)]
    assert get(g.open.remote()) == "opened"
    assert get(waiters) == ["passed"] * 3


def test_async_actor_method_can_await_an_object_ref(shoal_cluster):
    g = AsyncGate.remote()
    assert get(g.await_ref.remote([slow_value.remote("from a task", 0.2)])) == "from a task"
    assert get(g.await_ref.remote([shoal.put({"k": 1})])) == {"k": 1}
    refs = [slow_value.remote(i, 0.05) for i in range(4)]
    assert get(g.await_many.remote(refs)) == [0, 1, 2, 3]


def test_async_actor_method_can_await_another_actors_call(shoal_cluster):
    g = AsyncGate.remote()
    c = Counter.remote()
    assert get(g.call_other.remote(c, 5)) == 5
    assert get(c.read.remote()) == 5


def test_async_actor_error_in_awaited_ref_reaches_the_caller(shoal_cluster):
    g = AsyncGate.remote()
    c = Counter.remote()
    with pytest.raises(CustomError, match="inner failure"):
        get(g.await_ref.remote([c.fail.remote("inner failure")]))
    assert get(g.open.remote()) == "opened"


def test_async_actor_never_exceeds_max_concurrency(shoal_cluster):
    a = AsyncBusy.options(max_concurrency=2).remote()
    get([a.busy.remote(0.1) for _ in range(8)])
    assert get(a.peak_concurrency.remote()) == 2


def test_async_actor_with_max_concurrency_1_runs_calls_one_at_a_time(shoal_cluster):
    g = AsyncGate.options(max_concurrency=1).remote()
    blocked = g.wait_until_open.remote(3)
    opener = g.open.remote()
    # the opener is queued behind the waiter, which gives up after its 3 s timeout
    ready, _ = shoal.wait([opener], timeout=1.0)
    assert ready == []
    with pytest.raises(TaskError):
        get(blocked, timeout=GET_TIMEOUT)
    assert get(opener) == "opened"


# ------------------------------------------------------------ named actors
def test_named_actor_is_found_with_get_actor(shoal_cluster):
    c = Counter.options(name="the-counter").remote()
    get(c.increment.remote(3))
    found = shoal.get_actor("the-counter")
    assert get(found.increment.remote()) == 4
    assert found == c


def test_handle_from_get_actor_knows_method_options(shoal_cluster):
    original = Counter.options(name="with-options").remote(3)   # keeps the actor alive
    found = shoal.get_actor("with-options")
    refs = found.value_and_double.remote()
    assert get(refs) == [3, 6]
    assert found == original


def test_get_actor_of_unknown_name_raises_value_error(shoal_cluster):
    with pytest.raises(ValueError):
        shoal.get_actor("nobody-has-this-name")


def test_named_actor_in_a_namespace_is_found_only_there(shoal_cluster):
    c = Counter.options(name="ns-counter", namespace="team-a").remote(41)
    get(c.read.remote())
    found = shoal.get_actor("ns-counter", namespace="team-a")
    assert get(found.increment.remote()) == 42
    with pytest.raises(ValueError):
        shoal.get_actor("ns-counter")
    with pytest.raises(ValueError):
        shoal.get_actor("ns-counter", namespace="team-b")


def test_same_name_in_two_namespaces_names_two_actors(shoal_cluster):
    a = Counter.options(name="twin", namespace="ns-one").remote(1)
    b = Counter.options(name="twin", namespace="ns-two").remote(2)
    assert get(shoal.get_actor("twin", namespace="ns-one").read.remote()) == 1
    assert get(shoal.get_actor("twin", namespace="ns-two").read.remote()) == 2
    assert a != b


def test_duplicate_actor_name_raises_value_error(shoal_cluster):
    c = Counter.options(name="unique").remote()
    get(c.read.remote())
    with pytest.raises(ValueError):
        Counter.options(name="unique").remote()
    assert get(shoal.get_actor("unique").read.remote()) == 0


def test_get_if_exists_returns_the_existing_actor(shoal_cluster):
    first = Counter.options(name="shared", get_if_exists=True).remote(5)
    assert get(first.increment.remote()) == 6
    second = Counter.options(name="shared", get_if_exists=True).remote(100)
    assert second == first
    assert get(second.increment.remote()) == 7
    assert get(second.pid.remote()) == get(first.pid.remote())


def test_get_if_exists_creates_the_actor_when_missing(shoal_cluster):
    c = Counter.options(name="made-on-demand", get_if_exists=True).remote(9)
    assert get(c.read.remote()) == 9
    assert shoal.get_actor("made-on-demand") == c


@shoal.remote(max_retries=0)
def claim_name_then_die(name, registered, die):
    """What ActorClass.remote does before it submits a named creation (claim
    the name), then die before submitting it."""
    from shoal.core import get_core
    from shoal.scheduler.task import new_task_id
    from tests.conftest import touch, wait_for_file
    core = get_core()
    meta = {"class_name": "Counter", "methods": Counter._methods, "max_task_retries": 0}
    assert core.request("register_name", name, core.namespace, new_task_id(), True,
                        meta) is None
    touch(registered)
    wait_for_file(die)
    os._exit(1)


def test_a_name_claimed_by_a_process_that_dies_before_creating_is_freed(shoal_cluster,
                                                                        tmp_path):
    """get_if_exists during the claim gets the promised actor; when the
    claimer dies first, calls through that handle fail with ActorDiedError
    saying so, and the name can be used again."""
    from tests.conftest import touch, wait_for
    registered, die = str(tmp_path / "registered"), str(tmp_path / "die")
    ref = claim_name_then_die.remote("promised", registered, die)
    wait_for(lambda: os.path.exists(registered), timeout=30, what="the name claimed")
    promised = Counter.options(name="promised", get_if_exists=True).remote(0)
    call = promised.increment.remote()
    touch(die)
    with pytest.raises(WorkerCrashedError):
        get(ref)
    with pytest.raises(ActorDiedError, match="died before it submitted the creation"):
        get(call)
    fresh = Counter.options(name="promised", get_if_exists=True).remote(40)
    assert get(fresh.increment.remote()) == 41


def test_killed_named_actor_frees_its_name(shoal_cluster):
    c = Counter.options(name="reusable").remote(1)
    get(c.read.remote())
    shoal.kill(c)

    def name_is_free():
        try:
            shoal.get_actor("reusable")
            return False
        except ValueError:
            return True
    wait_for(name_is_free, timeout=15, what="the killed actor's name to be released")
    c2 = Counter.options(name="reusable").remote(2)
    assert get(shoal.get_actor("reusable").read.remote()) == 2
    assert c2 != c


def test_detached_actor_is_accepted_and_callable(shoal_cluster):
    d = Counter.options(name="detached-one", lifetime="detached").remote(3)
    assert get(d.increment.remote()) == 4
    assert get(shoal.get_actor("detached-one").read.remote()) == 4
    shoal.kill(d)


def test_detached_actor_outlives_its_handles(shoal_cluster):
    d = Counter.options(name="long-lived", lifetime="detached").remote(3)
    pid = get(d.pid.remote())
    del d
    gc.collect()
    assert get(slow_value.remote("flush", 0.0)) == "flush"   # the node hears of the drop
    again = shoal.get_actor("long-lived")
    assert get(again.read.remote()) == 3
    assert get(again.pid.remote()) == pid
    shoal.kill(again)


# ------------------------------------------------------------- termination
def test_kill_makes_later_calls_raise_actor_died_error(shoal_cluster):
    c = Counter.remote()
    pid = get(c.pid.remote())
    shoal.kill(c)
    with pytest.raises(ActorDiedError):
        get(c.read.remote())
    wait_for(lambda: not process_alive(pid), timeout=15, what="the killed actor's process to exit")
    with pytest.raises(ActorDiedError):
        get(c.read.remote())


def test_kill_fails_the_call_in_flight(shoal_cluster):
    r = ThreadedRendezvous.remote(1)
    get(r.thread_name.remote())
    in_flight = r.wait_for_release.remote()   # blocks up to 15 s
    shoal.kill(r)
    with pytest.raises(ActorDiedError):
        get(in_flight, timeout=10)


def test_kill_fails_calls_queued_behind_the_call_in_flight(shoal_cluster):
    r = ThreadedRendezvous.remote(1)
    get(r.thread_name.remote())
    in_flight = r.wait_for_release.remote()   # blocks up to 15 s
    queued = [r.thread_name.remote() for _ in range(3)]
    shoal.kill(r)
    for ref in [in_flight] + queued:
        with pytest.raises(ActorDiedError):
            get(ref, timeout=10)


def test_kill_does_not_restart_even_with_max_restarts(shoal_cluster):
    c = Counter.options(max_restarts=3).remote()
    get(c.read.remote())
    shoal.kill(c)
    with pytest.raises(ActorDiedError):
        get(c.read.remote())
    with pytest.raises(ActorDiedError):
        get(c.read.remote())


def test_kill_with_no_restart_false_restarts_the_actor(shoal_cluster):
    c = Counter.options(max_restarts=1).remote()
    assert get(c.increment.remote(5)) == 5
    pid = get(c.pid.remote())
    shoal.kill(c, no_restart=False)
    wait_for(lambda: not process_alive(pid), timeout=15, what="the killed actor's process to exit")
    value = wait_for(lambda: _try_get(c.read.remote()), timeout=30,
                     what="the actor to come back after shoal.kill(no_restart=False)")
    assert value == ("ok", 0)


def test_kill_rejects_something_that_is_not_an_actor(shoal_cluster):
    with pytest.raises(ValueError):
        shoal.kill(shoal.put(1))


def _try_get(ref):
    """("ok", value) if the call succeeded; None if the actor was unavailable."""
    try:
        return ("ok", shoal.get(ref, timeout=10))
    except ActorError:
        return None


def test_sigkilled_actor_with_max_restarts_restarts_with_fresh_state(shoal_cluster):
    c = Counter.options(max_restarts=1).remote()
    assert get(c.increment.remote()) == 1
    assert get(c.increment.remote()) == 2
    pid = get(c.pid.remote())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not process_alive(pid), timeout=15, what="the actor's process to die")
    # __init__ ran again, so the state starts over
    assert wait_for(lambda: _try_get(c.increment.remote()), timeout=30,
                    what="the restarted actor to answer") == ("ok", 1)
    new_pid = get(c.pid.remote())
    assert new_pid != pid

    # the one restart is spent: the next crash is final
    os.kill(new_pid, signal.SIGKILL)
    wait_for(lambda: not process_alive(new_pid), timeout=15, what="the actor's process to die")
    with pytest.raises(ActorDiedError):
        get(c.read.remote())
    with pytest.raises(ActorDiedError):
        get(c.read.remote())


def test_runtime_context_says_whether_the_actor_was_reconstructed(shoal_cluster):
    c = Counter.options(max_restarts=1).remote()
    assert get(c.was_reconstructed.remote()) is False
    pid = get(c.pid.remote())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not process_alive(pid), timeout=15, what="the actor's process to die")
    assert wait_for(lambda: _try_get(c.was_reconstructed.remote()), timeout=30,
                    what="the restarted actor to answer") == ("ok", True)


def test_sigkilled_actor_without_restarts_is_dead(shoal_cluster):
    c = Counter.options(max_restarts=0).remote()
    pid = get(c.pid.remote())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not process_alive(pid), timeout=15, what="the actor's process to die")
    with pytest.raises(ActorDiedError):
        get(c.read.remote())


def test_sigkilled_actor_with_max_restarts_minus_one_keeps_restarting(shoal_cluster):
    c = Counter.options(max_restarts=-1).remote()
    for _ in range(3):
        pid = get(c.pid.remote())
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not process_alive(pid), timeout=15, what="the actor's process to die")
        assert wait_for(lambda: _try_get(c.increment.remote()), timeout=30,
                        what="the restarted actor to answer") == ("ok", 1)


def test_max_task_retries_resends_the_call_in_flight_when_the_actor_died(shoal_cluster, tmp_path):
    a = CrashOnce.options(max_restarts=1, max_task_retries=1).remote()
    first_pid = get(a.pid.remote())
    marker = tmp_path / "crashed-once"
    status, pid = get(a.crash_the_first_time.remote(str(marker)), timeout=60)
    assert status == "survived"
    assert marker.read_text() == str(first_pid), "the first attempt ran, and crashed"
    assert pid != first_pid, "the retry ran in the restarted process"


def test_max_task_retries_set_per_method_call(shoal_cluster, tmp_path):
    a = CrashOnce.options(max_restarts=1).remote()
    get(a.pid.remote())
    marker = tmp_path / "crashed-once"
    status, _ = get(a.crash_the_first_time.options(max_task_retries=1).remote(str(marker)),
                    timeout=60)
    assert status == "survived"


def test_calls_queued_behind_a_crash_are_retried_with_max_task_retries(shoal_cluster, tmp_path):
    a = CrashOnce.options(max_restarts=1, max_task_retries=-1).remote()
    first_pid = get(a.pid.remote())
    marker = str(tmp_path / "crashed-once")
    refs = [a.crash_the_first_time.remote(marker) for _ in range(4)]
    results = get(refs, timeout=60)
    assert [status for status, _ in results] == ["survived"] * 4
    assert all(pid != first_pid for _, pid in results)


def test_call_in_flight_fails_without_max_task_retries_but_actor_restarts(shoal_cluster, tmp_path):
    a = CrashOnce.options(max_restarts=1).remote()
    first_pid = get(a.pid.remote())
    marker = tmp_path / "crashed-once"
    with pytest.raises(ActorError):
        get(a.crash_the_first_time.remote(str(marker)), timeout=60)
    outcome = wait_for(lambda: _try_get(a.crash_the_first_time.remote(str(marker))),
                       timeout=30, what="the restarted actor to answer")
    status, pid = outcome[1]
    assert status == "survived"
    assert pid != first_pid


def test_exit_actor_ends_the_actor_and_later_calls_raise_actor_died_error(shoal_cluster):
    c = Counter.options(max_restarts=2).remote()
    pid = get(c.pid.remote())
    c.quit.remote()
    wait_for(lambda: not process_alive(pid), timeout=15, what="the exited actor's process to end")
    with pytest.raises(ActorDiedError):
        get(c.read.remote())


def test_exit_actor_runs_calls_submitted_before_it(shoal_cluster):
    c = Counter.remote()
    before = [c.increment.remote() for _ in range(3)]
    c.quit.remote()
    assert get(before) == [1, 2, 3]


def test_calls_submitted_after_exit_actor_raise_actor_died_error(shoal_cluster):
    c = Counter.remote()
    get(c.read.remote())
    c.quit.remote()
    after = c.increment.remote()
    with pytest.raises(ActorDiedError):
        get(after)


def test_get_on_the_exit_actor_call_raises_actor_died_error(shoal_cluster):
    # Ray's docs: "The ObjectRef resulting from the task can be waited on to wait
    # for the actor to exit (calling ray.get() on it will raise a RayActorError)."
    c = Counter.remote()
    get(c.read.remote())
    with pytest.raises(ActorError):
        get(c.quit.remote())


def test_exit_actor_in_an_async_actor(shoal_cluster):
    g = AsyncGate.remote()
    pid = get(g.pid.remote())
    g.quit.remote()
    wait_for(lambda: not process_alive(pid), timeout=15, what="the exited actor's process to end")
    with pytest.raises(ActorDiedError):
        get(g.open.remote())


def test_exit_actor_outside_an_actor_raises(shoal_cluster):
    with pytest.raises(Exception):
        shoal.actor.exit_actor()


def test_actor_whose_handles_are_all_gone_is_stopped_while_the_driver_is_idle(
        no_worker_retirement, shoal_cluster):
    c = Counter.remote()
    pid = get(c.pid.remote())
    # Scenario, not synchronisation: the driver computes locally for a while
    # (workers finish starting, the cluster goes quiet), then drops its last
    # handle and calls nothing else.
    time.sleep(3.0)
    del c
    gc.collect()
    wait_for(lambda: not process_alive(pid), timeout=10,
             what="the unreferenced actor's process to exit")


def test_actor_whose_handles_are_all_gone_is_stopped_once_the_driver_does_more_work(shoal_cluster):
    c = Counter.remote()
    pid = get(c.pid.remote())
    del c
    gc.collect()
    assert get(slow_value.remote("more work", 0.0)) == "more work"
    wait_for(lambda: not process_alive(pid), timeout=15,
             what="the unreferenced actor's process to exit")


def test_unreferenced_actor_finishes_calls_already_submitted(shoal_cluster):
    c = Counter.remote()
    refs = [c.increment.remote() for _ in range(5)]
    del c
    gc.collect()
    assert get(refs) == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------ errors
def test_exception_in_init_makes_calls_raise_actor_died_error_with_the_cause(shoal_cluster):
    b = BrokenInit.remote()
    with pytest.raises(ActorDiedError) as info:
        get(b.ping.remote())
    assert "constructor exploded on purpose" in str(info.value)
    with pytest.raises(ActorDiedError):
        get(b.ping.remote())


def test_failed_object_ref_passed_to_init_makes_calls_raise_actor_died_error(shoal_cluster):
    b = Counter.remote(failing_task.remote())
    with pytest.raises(ActorDiedError) as info:
        get(b.read.remote(), timeout=15)
    assert "upstream task failed" in str(info.value)


def test_failed_object_ref_passed_to_a_method_raises_the_upstream_error(shoal_cluster):
    c = Counter.remote()
    with pytest.raises(IndexError, match="upstream task failed"):
        get(c.record.remote(failing_task.remote()))
    assert get(c.increment.remote()) == 1


def test_exception_in_a_method_is_a_task_error_and_the_users_class(shoal_cluster):
    c = Counter.remote()
    get(c.increment.remote(2))
    with pytest.raises(CustomError) as info:
        get(c.fail.remote("method went wrong"))
    assert isinstance(info.value, TaskError)
    assert isinstance(info.value, shoal.exceptions.RayTaskError)
    assert "method went wrong" in str(info.value)
    # the actor survives its method's exception, state intact
    assert get(c.increment.remote()) == 3


def test_calling_the_actor_class_directly_raises_type_error(shoal_cluster):
    with pytest.raises(TypeError):
        Counter()


def test_calling_a_method_directly_raises_type_error(shoal_cluster):
    c = Counter.remote()
    with pytest.raises(TypeError):
        c.read()


def test_unknown_method_raises_attribute_error(shoal_cluster):
    c = Counter.remote()
    with pytest.raises(AttributeError):
        c.nonexistent
    with pytest.raises(AttributeError):
        c.nonexistent.remote()


def test_invalid_actor_option_raises_value_error(shoal_cluster):
    with pytest.raises(ValueError):
        Counter.options(max_concurrency=0).remote()
    with pytest.raises(ValueError):
        Counter.options(lifetime="forever").remote()
    with pytest.raises(ValueError):
        Counter.options(no_such_option=1).remote()


# -------------------------------------------------------- returns and context
def test_method_decorated_with_num_returns_gives_that_many_refs(shoal_cluster):
    c = Counter.remote(4)
    refs = c.value_and_double.remote()
    assert isinstance(refs, list) and len(refs) == 2
    assert all(isinstance(r, shoal.ObjectRef) for r in refs)
    assert get(refs) == [4, 8]


def test_method_options_num_returns(shoal_cluster):
    c = Counter.remote(1)
    a, b, d = c.triple.options(num_returns=3).remote()
    assert get([a, b, d]) == [1, 2, 3]


def test_runtime_context_gives_the_actor_id_inside_an_actor(shoal_cluster):
    c1 = Counter.remote()
    c2 = Counter.remote()
    id1 = get(c1.actor_id.remote())
    assert isinstance(id1, str) and id1
    assert get(c1.actor_id.remote()) == id1
    assert get(c2.actor_id.remote()) != id1
    assert id1 == c1._actor_id.hex()
    assert shoal.get_runtime_context().get_actor_id() is None
    assert get(actor_id_in_task.remote()) is None


# --------------------------------------------------------------- resources
@pytest.mark.cluster(num_cpus=2, num_gpus=0)
def test_actor_needing_a_missing_gpu_fails_clearly(shoal_cluster):
    a = Counter.options(num_gpus=1).remote()
    with pytest.raises((InfeasibleTaskError, ActorDiedError)):
        get(a.read.remote(), timeout=30)


def test_actor_needing_more_cpus_than_exist_fails_clearly(shoal_cluster):
    a = Counter.options(num_cpus=64).remote()
    with pytest.raises((InfeasibleTaskError, ActorDiedError)):
        get(a.read.remote(), timeout=30)


def test_actor_needing_an_unknown_custom_resource_fails_clearly(shoal_cluster):
    a = Counter.options(resources={"tpu-pod": 1}).remote()
    with pytest.raises((InfeasibleTaskError, ActorDiedError)) as info:
        get(a.read.remote(), timeout=30)
    assert "tpu-pod" in str(info.value)


@pytest.mark.cluster(num_cpus=2, resources={"widget": 2})
def test_actor_with_custom_resource_runs_when_it_fits(shoal_cluster):
    a = Counter.options(resources={"widget": 1}).remote(1)
    assert get(a.read.remote()) == 1


def test_actor_waits_for_cpus_held_by_another_actor(shoal_cluster):
    a = Counter.options(num_cpus=2).remote()
    assert get(a.read.remote()) == 0
    b = Counter.options(num_cpus=1).remote(7)
    pending = b.read.remote()
    ready, _ = shoal.wait([pending], timeout=1.0)
    assert ready == [], "the second actor cannot start while the first holds every CPU"
    shoal.kill(a)
    assert get(pending) == 7


@pytest.mark.cluster(num_cpus=2, num_gpus=2)
def test_actors_with_a_gpu_each_get_different_gpu_ids(shoal_cluster):
    a = Counter.options(num_gpus=1).remote()
    b = Counter.options(num_gpus=1).remote()
    ids_a = get(a.gpu_ids.remote())
    ids_b = get(b.gpu_ids.remote())
    assert len(ids_a) == 1 and len(ids_b) == 1
    assert ids_a != ids_b
