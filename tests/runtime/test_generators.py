"""Multiple returns and streaming generators, as Ray users know them:
``num_returns=N``, generator tasks whose items arrive as they are yielded
(``ObjectRefGenerator``, sync and ``async for``), errors mid-stream, and
generator methods on sync and async actors.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
import pytest

import shoal
from tests.conftest import wait_for_file as _wait_for_file
from shoal.exceptions import ActorDiedError, ShoalError, TaskError, WorkerCrashedError

GET_TIMEOUT = 30


def get(refs, timeout: float = GET_TIMEOUT):
    return shoal.get(refs, timeout=timeout)


class StreamError(Exception):
    """A user exception raised part-way through a generator."""




# ------------------------------------------------------------ remote functions
@shoal.remote(num_returns=3)
def three_values(x):
    return x, x + 1, x + 2


@shoal.remote
def pair():
    return "a", "b"


@shoal.remote(num_returns=3)
def three_from_a_generator():
    for i in range(3):
        yield i * 10


@shoal.remote
def count_up(n):
    for i in range(n):
        yield i


@shoal.remote
def gated_stream(gate: str):
    yield "first"
    if not _wait_for_file(gate, 20):
        yield "the gate was never opened"
        return
    yield "second"


@shoal.remote
def fails_after(n):
    for i in range(n):
        yield i
    raise StreamError(f"broke after {n} items")


@shoal.remote
def big_arrays(n, size):
    for i in range(n):
        yield np.full(size, i, dtype=np.float64)


@shoal.remote
def plus_one(x):
    return x + 1


@shoal.remote(max_retries=0)
def dies_after_two_items():
    yield 0
    yield 1
    os.kill(os.getpid(), signal.SIGKILL)
    yield 2


@shoal.remote(max_retries=1)
def dies_once_mid_stream(marker: str):
    yield 0
    yield 1
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    yield 2


@shoal.remote
def consume_a_stream_in_a_task(n):
    return [shoal.get(r, timeout=GET_TIMEOUT) * 2 for r in count_up.remote(n)]


@shoal.remote
def consume_actor_stream_in_a_task(streamer, n):
    return [shoal.get(r, timeout=GET_TIMEOUT) for r in streamer.stream.remote(n)]


def plain_generator(n):
    for i in range(n):
        yield f"item-{i}"


@shoal.remote
class Streamer:
    def __init__(self, prefix):
        self.prefix = prefix
        self.calls = 0

    def stream(self, n):
        self.calls += 1
        for i in range(n):
            yield f"{self.prefix}{i}"

    def gated(self, gate: str):
        yield "first"
        yield "second" if _wait_for_file(gate, 20) else "the gate was never opened"

    def fails_after(self, n):
        for i in range(n):
            yield i
        raise StreamError("actor stream broke")

    def dies_mid_stream(self):
        yield "a"
        os.kill(os.getpid(), signal.SIGKILL)
        yield "b"

    def as_list(self, n):
        return [f"{self.prefix}{i}" for i in range(n)]

    def calls_so_far(self):
        return self.calls


@shoal.remote
class AsyncStreamer:
    def __init__(self):
        self.gate = asyncio.Event()

    async def stream(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i * i

    async def gated(self):
        yield "first"
        try:
            await asyncio.wait_for(self.gate.wait(), timeout=20)
        except asyncio.TimeoutError:
            yield "the gate was never opened"
            return
        yield "second"

    async def open_gate(self):
        self.gate.set()
        return "opened"

    async def fails_after(self, n):
        for i in range(n):
            yield i
        raise StreamError("async actor stream broke")


# ------------------------------------------------------------ num_returns=N
def test_num_returns_3_gives_three_refs(shoal_cluster):
    refs = three_values.remote(5)
    assert isinstance(refs, list) and len(refs) == 3
    assert all(isinstance(r, shoal.ObjectRef) for r in refs)
    assert get(refs) == [5, 6, 7]
    assert get(refs[2]) == 7


def test_num_returns_set_with_options(shoal_cluster):
    a, b = pair.options(num_returns=2).remote()
    assert get(a) == "a" and get(b) == "b"


def test_default_num_returns_gives_one_ref_holding_the_tuple(shoal_cluster):
    ref = pair.remote()
    assert isinstance(ref, shoal.ObjectRef)
    assert get(ref) == ("a", "b")


def test_num_returns_0_gives_none(shoal_cluster):
    @shoal.remote(num_returns=0)
    def side_effect_only():
        return None
    assert side_effect_only.remote() is None


def test_generator_function_with_num_returns_3_gives_three_refs(shoal_cluster):
    refs = three_from_a_generator.remote()
    assert len(refs) == 3
    assert get(refs) == [0, 10, 20]


def test_wrong_number_of_returns_is_an_error_on_get(shoal_cluster):
    refs = three_values.options(num_returns=2).remote(1)
    assert len(refs) == 2
    with pytest.raises(TaskError):
        get(refs[0])


# ------------------------------------------------------------ streaming
def test_generator_task_returns_an_object_ref_generator(shoal_cluster):
    gen = count_up.remote(3)
    assert isinstance(gen, shoal.ObjectRefGenerator)
    refs = list(gen)
    assert all(isinstance(r, shoal.ObjectRef) for r in refs)
    assert get(refs) == [0, 1, 2]


def test_generator_items_arrive_in_order(shoal_cluster):
    gen = count_up.remote(200)
    assert [get(ref) for ref in gen] == list(range(200))


def test_empty_generator_yields_nothing(shoal_cluster):
    assert list(count_up.remote(0)) == []


def test_first_item_is_available_before_the_generator_finishes(shoal_cluster, tmp_path):
    gate = tmp_path / "gate"
    gen = gated_stream.remote(str(gate))
    first = next(gen)
    assert get(first, timeout=15) == "first"
    # the task is still running: it waits for the gate we have not opened yet
    ready, _ = shoal.wait([gen.completed()], timeout=0)
    assert ready == []
    gate.touch()
    assert [get(r) for r in gen] == ["second"]
    get(gen.completed())


def test_error_mid_generator_surfaces_on_the_next_ref_then_iteration_stops(shoal_cluster):
    gen = fails_after.remote(2)
    assert get(next(gen)) == 0
    assert get(next(gen)) == 1
    bad = next(gen)
    with pytest.raises(StreamError) as info:
        get(bad)
    assert isinstance(info.value, TaskError)
    assert "broke after 2 items" in str(info.value)
    with pytest.raises(StopIteration):
        next(gen)


def test_error_before_the_first_yield_surfaces_on_the_first_ref(shoal_cluster):
    gen = fails_after.remote(0)
    refs = list(gen)
    assert len(refs) == 1
    with pytest.raises(StreamError):
        get(refs[0])


def test_generator_items_can_be_passed_to_other_tasks(shoal_cluster):
    gen = count_up.remote(5)
    assert get([plus_one.remote(ref) for ref in gen]) == [1, 2, 3, 4, 5]


def test_generator_can_stream_large_arrays(shoal_cluster):
    size = 256 * 1024   # 2 MiB per item, more than travels inline
    arrays = [get(ref) for ref in big_arrays.remote(4, size)]
    assert len(arrays) == 4
    for i, a in enumerate(arrays):
        assert a.shape == (size,)
        assert np.all(a == i)


def test_num_returns_streaming_option(shoal_cluster):
    streaming = shoal.remote(num_returns="streaming")(plain_generator)
    gen = streaming.remote(3)
    assert isinstance(gen, shoal.ObjectRefGenerator)
    assert [get(r) for r in gen] == ["item-0", "item-1", "item-2"]

    via_options = shoal.remote(plain_generator).options(num_returns="streaming")
    assert [get(r) for r in via_options.remote(2)] == ["item-0", "item-1"]


def test_get_of_a_generator_raises_type_error(shoal_cluster):
    gen = count_up.remote(1)
    with pytest.raises(TypeError):
        shoal.get(gen)
    assert [get(r) for r in gen] == [0]


def test_completed_ref_resolves_once_the_generator_is_done(shoal_cluster):
    gen = count_up.remote(3)
    get(gen.completed())
    assert [get(r) for r in gen] == [0, 1, 2]


def test_dropping_an_unconsumed_generator_leaves_the_cluster_working(shoal_cluster):
    gen = count_up.remote(50)
    next(gen)
    del gen
    assert [get(r) for r in count_up.remote(3)] == [0, 1, 2]


def test_two_generators_iterated_in_interleaved_order(shoal_cluster):
    a = count_up.remote(5)
    b = fails_after.remote(5)
    pairs = [(get(next(a)), get(next(b))) for _ in range(5)]
    assert pairs == [(i, i) for i in range(5)]


@pytest.mark.cluster(num_cpus=1)
def test_generator_can_be_consumed_inside_a_task(shoal_cluster):
    # Ray's next() waits with ray.wait, which lends the CPU while blocked
    assert get(consume_a_stream_in_a_task.remote(4), timeout=15) == [0, 2, 4, 6]


def test_generator_can_be_consumed_inside_a_task_with_a_cpu_to_spare(shoal_cluster):
    assert get(consume_a_stream_in_a_task.remote(4), timeout=15) == [0, 2, 4, 6]


def test_actor_generator_can_be_consumed_inside_a_task(shoal_cluster):
    s = Streamer.remote("q")
    assert get(consume_actor_stream_in_a_task.remote(s, 3)) == ["q0", "q1", "q2"]


def test_next_after_the_end_keeps_raising_stop_iteration(shoal_cluster):
    gen = count_up.remote(1)
    assert get(next(gen)) == 0
    with pytest.raises(StopIteration):
        next(gen)
    with pytest.raises(StopIteration):
        next(gen)


def _drain(gen, deadline_s: float = 30.0) -> list:
    """Every item of ``gen`` as ("ok", value) or ("error", exception), bounded."""
    out = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            ref = gen._next_sync(10)
        except StopIteration:
            return out
        try:
            out.append(("ok", get(ref, timeout=10)))
        except ShoalError as e:
            out.append(("error", e))
    raise AssertionError(f"generator did not end within {deadline_s} s; got {out}")


def test_worker_crash_mid_generator_surfaces_as_an_error_item(shoal_cluster):
    items = _drain(dies_after_two_items.remote())
    assert [v for kind, v in items[:2]] == [0, 1]
    assert len(items) == 3, f"expected 2 items and an error, got {items}"
    assert items[2][0] == "error"
    assert isinstance(items[2][1], WorkerCrashedError)


def test_worker_crash_mid_generator_makes_completed_raise(shoal_cluster):
    gen = dies_after_two_items.remote()
    with pytest.raises(WorkerCrashedError):
        get(gen.completed())


def test_generator_retried_after_a_worker_crash_yields_each_item_once(shoal_cluster, tmp_path):
    gen = dies_once_mid_stream.remote(str(tmp_path / "crashed"))
    assert _drain(gen) == [("ok", 0), ("ok", 1), ("ok", 2)]
    assert (tmp_path / "crashed").exists(), "the first attempt ran and crashed"


# ------------------------------------------------------------ async driver
def test_async_for_over_a_generator(shoal_cluster):
    async def consume():
        values = []
        async for ref in count_up.remote(5):
            values.append(await ref)
        return values
    assert asyncio.run(asyncio.wait_for(consume(), timeout=GET_TIMEOUT)) == [0, 1, 2, 3, 4]


def test_async_for_gets_the_first_item_before_the_generator_finishes(shoal_cluster, tmp_path):
    gate = tmp_path / "gate"

    async def consume():
        values = []
        async for ref in gated_stream.remote(str(gate)):
            values.append(await ref)
            gate.touch()   # let the task go on only once the first item arrived
        return values
    assert asyncio.run(asyncio.wait_for(consume(), timeout=GET_TIMEOUT)) == ["first", "second"]


def test_async_for_error_mid_generator(shoal_cluster):
    async def consume():
        values = []
        async for ref in fails_after.remote(2):
            try:
                values.append(await ref)
            except StreamError as e:
                values.append(f"error: {e.cause}")
        return values
    values = asyncio.run(asyncio.wait_for(consume(), timeout=GET_TIMEOUT))
    assert values == [0, 1, "error: broke after 2 items"]


# ------------------------------------------------------------ actor generators
def test_actor_generator_method_streams(shoal_cluster):
    s = Streamer.remote("x")
    gen = s.stream.remote(4)
    assert isinstance(gen, shoal.ObjectRefGenerator)
    assert [get(r) for r in gen] == ["x0", "x1", "x2", "x3"]
    assert get(s.calls_so_far.remote()) == 1


def test_actor_generator_method_first_item_before_it_finishes(shoal_cluster, tmp_path):
    s = Streamer.remote("x")
    gate = tmp_path / "gate"
    gen = s.gated.remote(str(gate))
    assert get(next(gen), timeout=15) == "first"
    gate.touch()
    assert [get(r) for r in gen] == ["second"]


def test_actor_generator_method_error_mid_stream(shoal_cluster):
    s = Streamer.remote("x")
    refs = list(s.fails_after.remote(1))
    assert len(refs) == 2
    assert get(refs[0]) == 0
    with pytest.raises(StreamError, match="actor stream broke"):
        get(refs[1])
    # the actor carries on
    assert [get(r) for r in s.stream.remote(1)] == ["x0"]


def test_actor_dying_mid_generator_surfaces_as_an_error_item(shoal_cluster):
    s = Streamer.remote("x")
    items = _drain(s.dies_mid_stream.remote())
    assert items[0] == ("ok", "a")
    assert len(items) == 2, f"expected 1 item and an error, got {items}"
    assert items[1][0] == "error"
    assert isinstance(items[1][1], ActorDiedError)


def test_actor_generators_keep_call_order(shoal_cluster):
    s = Streamer.remote("p")
    gens = [s.stream.remote(2) for _ in range(5)]
    assert [[get(r) for r in g] for g in gens] == [["p0", "p1"]] * 5
    assert get(s.calls_so_far.remote()) == 5


def test_actor_method_with_num_returns_streaming_option(shoal_cluster):
    s = Streamer.remote("y")
    gen = s.stream.options(num_returns="streaming").remote(2)
    assert isinstance(gen, shoal.ObjectRefGenerator)
    assert [get(r) for r in gen] == ["y0", "y1"]


def test_threaded_actor_generator_method_streams(shoal_cluster):
    s = Streamer.options(max_concurrency=2).remote("t")
    assert [get(r) for r in s.stream.remote(3)] == ["t0", "t1", "t2"]


def test_async_actor_generator_method_streams(shoal_cluster):
    a = AsyncStreamer.remote()
    gen = a.stream.remote(5)
    assert isinstance(gen, shoal.ObjectRefGenerator)
    assert [get(r) for r in gen] == [0, 1, 4, 9, 16]


def test_async_actor_generator_first_item_before_it_finishes(shoal_cluster):
    a = AsyncStreamer.remote()
    gen = a.gated.remote()
    assert get(next(gen), timeout=15) == "first"
    # another call on the same async actor runs while the generator waits
    assert get(a.open_gate.remote(), timeout=15) == "opened"
    assert [get(r) for r in gen] == ["second"]


def test_async_actor_generator_error_mid_stream(shoal_cluster):
    a = AsyncStreamer.remote()
    refs = list(a.fails_after.remote(2))
    assert get(refs[:2]) == [0, 1]
    with pytest.raises(StreamError, match="async actor stream broke"):
        get(refs[2])


def test_async_for_over_an_async_actor_generator(shoal_cluster):
    a = AsyncStreamer.remote()

    async def consume():
        return [await ref async for ref in a.stream.remote(4)]
    assert asyncio.run(asyncio.wait_for(consume(), timeout=GET_TIMEOUT)) == [0, 1, 4, 9]
