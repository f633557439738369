"""shoal.util.queue.Queue, as ray.util.queue users know it: FIFO order,
blocking and non-blocking puts and gets, timeouts, batches, asyncio,
sharing with tasks and actors, and what a dead queue actor gives."""
from __future__ import annotations

import asyncio
import queue as stdlib_queue
import time

import numpy as np
import pytest

import shoal
from shoal.exceptions import ActorDiedError
from shoal.util.queue import Empty, Full, Queue

GET_TIMEOUT = 30


@shoal.remote
def consume(q, count):
    return [q.get(timeout=GET_TIMEOUT) for _ in range(count)]


@shoal.remote
def produce(q, items):
    for item in items:
        q.put(item, timeout=GET_TIMEOUT)
    return len(items)


@shoal.remote
def get_forever(q):
    return q.get()


@shoal.remote
class Summer:
    def __init__(self, q):
        self.q = q

    def take(self, count):
        return sum(self.q.get(timeout=GET_TIMEOUT) for _ in range(count))


def test_items_come_out_in_the_order_they_went_in(shoal_cluster):
    q = Queue()
    for i in range(5):
        q.put(i)
    assert (q.qsize(), q.size(), len(q), q.empty(), q.full()) == (5, 5, 5, False, False)
    assert [q.get() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert q.empty()


def test_a_bounded_queue_is_full_at_maxsize(shoal_cluster):
    q = Queue(maxsize=2)
    q.put("a")
    q.put_nowait("b")
    assert q.full()
    with pytest.raises(Full):
        q.put_nowait("c")
    with pytest.raises(stdlib_queue.Full):      # Ray's Full is the stdlib's too
        q.put("c", block=False)
    assert q.get_nowait() == "a"
    assert not q.full()


def test_get_nowait_on_an_empty_queue_raises_empty(shoal_cluster):
    q = Queue()
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(stdlib_queue.Empty):
        q.get(block=False)


def test_timeouts_raise_empty_and_full_after_waiting(shoal_cluster):
    q = Queue(maxsize=1)
    start = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=0.2)
    assert time.monotonic() - start >= 0.2
    q.put(1)
    start = time.monotonic()
    with pytest.raises(Full):
        q.put(2, timeout=0.2)
    assert time.monotonic() - start >= 0.2
    assert q.get(timeout=0) == 1


def test_a_negative_timeout_is_refused(shoal_cluster):
    q = Queue()
    with pytest.raises(ValueError, match="non-negative"):
        q.get(timeout=-1)
    with pytest.raises(ValueError, match="non-negative"):
        q.put(1, timeout=-1)


def test_batches_go_in_and_out_whole_or_not_at_all(shoal_cluster):
    q = Queue(maxsize=3)
    q.put_nowait_batch([1, 2])
    with pytest.raises(Full):
        q.put_nowait_batch([3, 4])
    assert q.size() == 2
    with pytest.raises(Empty):
        q.get_nowait_batch(3)
    assert q.get_nowait_batch(2) == [1, 2]
    assert q.get_nowait_batch(0) == []


def test_batch_arguments_are_checked(shoal_cluster):
    q = Queue()
    with pytest.raises(TypeError):
        q.put_nowait_batch(5)
    with pytest.raises(TypeError):
        q.get_nowait_batch("2")
    with pytest.raises(ValueError):
        q.get_nowait_batch(-1)


def test_async_put_and_get_await(shoal_cluster):
    q = Queue(maxsize=1)

    async def main():
        await q.put_async("x")
        with pytest.raises(Full):
            await q.put_async("y", timeout=0.05)
        first = await q.get_async()
        with pytest.raises(Empty):
            await q.get_async(block=False)
        waiter = asyncio.ensure_future(q.get_async(timeout=GET_TIMEOUT))
        await q.put_async("z")
        return first, await waiter
    assert asyncio.run(main()) == ("x", "z")


def test_blocked_consumers_do_not_starve_producers_of_cpus(shoal_cluster):
    # three consumers on two CPUs, submitted first: if a blocked get held its
    # CPU, no producer could ever run
    q = Queue()
    consumers = [consume.remote(q, 2) for _ in range(3)]
    producers = [produce.remote(q, [10 * p + i for i in range(2)]) for p in range(3)]
    assert shoal.get(producers, timeout=GET_TIMEOUT) == [2, 2, 2]
    got = shoal.get(consumers, timeout=GET_TIMEOUT)
    assert sorted(x for batch in got for x in batch) == [0, 1, 10, 11, 20, 21]


def test_an_actor_shares_the_queue_passed_to_it(shoal_cluster):
    q = Queue()
    summer = Summer.remote(q)
    q.put_nowait_batch([1, 2, 3])
    assert shoal.get(summer.take.remote(3), timeout=GET_TIMEOUT) == 6


def test_large_items_travel_through_the_queue(shoal_cluster):
    q = Queue()
    q.put(np.arange(1_000_000))
    assert int(q.get().sum()) == 499999500000


def test_actor_options_name_the_backing_actor(shoal_cluster):
    q = Queue(actor_options={"name": "work-items"})
    q.put(7)
    assert shoal.get(shoal.get_actor("work-items").qsize.remote()) == 1


def test_shutdown_fails_waiting_gets_and_later_use(shoal_cluster):
    q = Queue()
    q.put("warm-up")
    waiting = get_forever.remote(q)
    assert shoal.get(waiting, timeout=GET_TIMEOUT) == "warm-up"
    waiting = get_forever.remote(q)
    q.shutdown()
    with pytest.raises(ActorDiedError):
        shoal.get(waiting, timeout=GET_TIMEOUT)
    with pytest.raises(RuntimeError, match="shut down"):
        q.put(1)
    q.shutdown()        # a second shutdown does nothing


def test_forced_shutdown_kills_the_actor(shoal_cluster):
    q = Queue()
    handle = q.actor
    q.shutdown(force=True)
    with pytest.raises(ActorDiedError):
        shoal.get(handle.qsize.remote(), timeout=GET_TIMEOUT)


def test_a_killed_queue_actor_gives_actor_died_error_not_a_hang(shoal_cluster):
    q = Queue()
    waiting = get_forever.remote(q)
    shoal.kill(q.actor)
    with pytest.raises(ActorDiedError):
        shoal.get(waiting, timeout=GET_TIMEOUT)
    with pytest.raises(ActorDiedError):
        q.get(timeout=1)


def test_the_public_names_exist():
    import shoal.util.queue as module
    for name in module.__all__:
        assert hasattr(module, name), name
