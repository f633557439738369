"""Objects: zero-copy shared memory, reference counting, store limits."""
from __future__ import annotations

import gc
import os

import numpy as np
import pytest

import shoal
from shoal.exceptions import ObjectStoreFullError
from tests.conftest import wait_for


def _store_used():
    total = shoal.cluster_resources()["object_store_memory"]
    return total - shoal.available_resources()["object_store_memory"]


def test_large_arrays_come_back_as_read_only_zero_copy_views(shoal_cluster):
    arr = np.random.default_rng(0).random(1_000_000)
    out = shoal.get(shoal.put(arr))
    np.testing.assert_array_equal(out, arr)
    assert not out.flags.writeable          # a view into shared memory
    assert not out.flags.owndata


def test_a_task_reads_a_stored_array_without_copying(shoal_cluster):
    @shoal.remote
    def inspect_arg(a):
        return a.flags.owndata, a.flags.writeable, float(a[123])

    ref = shoal.put(np.arange(5_000_000, dtype=np.float64))
    owndata, writeable, value = shoal.get(inspect_arg.remote(ref))
    assert (owndata, writeable, value) == (False, False, 123.0)


def test_large_argument_passed_by_value_is_stored_once(shoal_cluster):
    @shoal.remote
    def total(a):
        return float(a.sum()), a.flags.owndata

    arr = np.ones(3_000_000)
    s, owndata = shoal.get(total.remote(arr))
    assert s == 3_000_000 and owndata is False


def test_large_task_results_go_through_shared_memory(shoal_cluster):
    @shoal.remote
    def make(n):
        return np.full(n, 7, dtype=np.uint8)

    out = shoal.get(make.remote(20_000_000))
    assert out.shape == (20_000_000,) and int(out[-1]) == 7


def test_objects_are_freed_when_no_ref_remains(shoal_cluster):
    base = _store_used()
    ref = shoal.put(np.ones(10_000_000, dtype=np.uint8))
    assert _store_used() >= base + 10_000_000
    del ref
    gc.collect()
    wait_for(lambda: _store_used() <= base, timeout=10, what="the object to be freed")


def test_a_live_view_keeps_its_object_alive(shoal_cluster):
    ref = shoal.put(np.arange(5_000_000, dtype=np.int64))
    view = shoal.get(ref)
    del ref
    gc.collect()
    # the array still reads the right data: its memory was not reused
    other = shoal.put(np.zeros(5_000_000, dtype=np.int64))
    assert int(view[4_999_999]) == 4_999_999
    del view, other


def test_results_of_many_tasks_are_freed(shoal_cluster):
    @shoal.remote
    def big(i):
        return np.full(200_000, i, dtype=np.float64)

    base = _store_used()
    for _ in range(5):
        vals = shoal.get([big.remote(i) for i in range(20)])
        assert [int(v[0]) for v in vals] == list(range(20))
        del vals
    gc.collect()
    wait_for(lambda: _store_used() <= base, timeout=10, what="task results to be freed")


def test_ref_held_by_a_worker_keeps_the_object_alive(shoal_cluster):
    @shoal.remote
    class Keeper:
        def keep(self, box):
            self.ref = box[0]
            return True

        def read(self):
            return int(shoal.get(self.ref)[10])

    k = Keeper.remote()
    ref = shoal.put(np.arange(1_000_000))
    assert shoal.get(k.keep.remote([ref]))
    del ref
    gc.collect()
    assert shoal.get(k.read.remote()) == 10


def test_store_full_is_a_clear_error(shoal_cluster):
    with pytest.raises(ObjectStoreFullError, match="object store"):
        shoal.put(np.ones(400 * 1024 * 1024, dtype=np.uint8))


def _in_arena(address: int) -> bool:
    import ctypes
    from shoal.core import current_core
    arena = current_core().arena
    start = ctypes.addressof(ctypes.c_char.from_buffer(arena.mmap))
    return start <= address < start + arena.size


def test_torch_cpu_tensors_are_zero_copy():
    torch = pytest.importorskip("torch", reason="torch is an optional extra")
    shoal.init(num_cpus=1)
    try:
        t = torch.arange(1_000_000, dtype=torch.float32)
        out = shoal.get(shoal.put(t))
        assert torch.equal(out, t) and _in_arena(out.data_ptr())

        @shoal.remote
        def double(x):
            return x * 2

        assert torch.equal(shoal.get(double.remote(t)), t * 2)
        half = torch.ones(100_000, dtype=torch.bfloat16)
        assert shoal.get(shoal.put(half)).dtype == torch.bfloat16
        grad = torch.ones(3, requires_grad=True)
        assert shoal.get(shoal.put(grad)).requires_grad
    finally:
        shoal.shutdown()


def test_arrow_buffers_round_trip():
    pa = pytest.importorskip("pyarrow", reason="pyarrow is an optional extra")
    shoal.init(num_cpus=1)
    try:
        table = pa.table({"x": list(range(100_000))})
        out = shoal.get(shoal.put(table))
        assert out.equals(table)
        assert _in_arena(out.column("x").chunk(0).buffers()[1].address)
    finally:
        shoal.shutdown()


def test_no_shared_memory_file_is_left_behind(shoal_cluster):
    shoal.put(np.ones(1_000_000))
    # the arena is a memfd: it has no name in /dev/shm at all
    assert not [f for f in os.listdir("/dev/shm") if "shoal" in f]


def test_a_ref_that_outlived_its_object_raises_object_lost(shoal_cluster):
    import pickle
    from shoal.exceptions import ObjectLostError

    ref = shoal.put("short-lived")
    saved = pickle.dumps(ref)
    del ref
    gc.collect()
    wait_for(lambda: shoal.available_resources() is not None, timeout=5)
    stale = pickle.loads(saved)
    with pytest.raises(ObjectLostError, match="lost"):
        shoal.get(stale, timeout=10)

    @shoal.remote
    def use(x):
        return x

    with pytest.raises(ObjectLostError):
        shoal.get(use.remote(stale), timeout=10)
