"""Benchmark workloads, run in a fresh process for one system.

    python bench/workloads.py --system shoal|ray|mp --workload NAME --reps N

Imports the runtime under the name ``ray`` (``import shoal as ray`` or
``import ray``), starts it with ``ray.init(num_cpus=2)``, warms the workload
up, measures it N times and prints one line ``BENCH_RESULT {json}`` on stdout.
Only Ray's core API is used, so the same code measures both runtimes.

``--system mp`` runs the rows that have a ``multiprocessing.Pool(2)``
equivalent, as a point of reference.

bench/run.py imports this module for the workload table (names, units,
targets); nothing here imports a runtime at module level.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Optional

NUM_CPUS = 2
RESULT_PREFIX = "BENCH_RESULT "
MB = 10**6  # decimal units: 100 MB = 1e8 bytes, GB/s = 1e9 bytes/s

now = time.perf_counter


@dataclass
class Workload:
    name: str
    unit: str
    higher_is_better: bool
    target: Optional[float]  # shoal's target on a 2-core machine, num_cpus=2
    warmup: int = 1  # untimed calls of measure() before the timed ones
    fresh_process: bool = False  # one measurement per process; does its own init
    init_kwargs: Optional[dict] = None  # extra ray.init() arguments
    setup: Optional[Callable] = None  # setup(ray) -> measure() -> float
    mp_setup: Optional[Callable] = None  # setup(pool) -> measure() -> float
    # Other columns this row has (bench/cluster.py: "tcp", the raw-TCP ceiling).
    peers: tuple = ()
    # A target relative to another column: shoal >= target x that column's
    # median (relative_to = (system, label)); target=None: no target.
    relative_to: Optional[tuple] = None
    batches: Optional[int] = None  # overrides --batches for this row

    def runs_on(self, system: str) -> bool:
        if system in ("shoal", "ray"):
            return True
        if system == "mp":
            return self.mp_setup is not None
        return system in self.peers

    @property
    def target_text(self) -> str:
        if self.target is None:
            return "—"
        sign = "≥" if self.higher_is_better else "≤"
        if self.relative_to:
            return f"{sign} {self.target:g}× {self.relative_to[1]}"
        return f"{sign} {fmt_number(self.target)} {self.unit}"

    def meets(self, value: float, reference: Optional[float] = None) -> bool:
        """Whether shoal's ``value`` meets the target (``reference``: the median
        of the column a relative target refers to)."""
        target = self.target * reference if self.relative_to else self.target
        return value >= target if self.higher_is_better else value <= target


WORKLOADS: dict[str, Workload] = {}


def workload(name, unit, target, higher_is_better=False, warmup=1, fresh_process=False,
             init_kwargs=None):
    """Register ``setup(ray) -> measure``; measure() returns one number in ``unit``."""

    def register(setup):
        WORKLOADS[name] = Workload(name, unit, higher_is_better, target, warmup,
                                   fresh_process, init_kwargs, setup=setup)
        return setup

    return register


def pool_variant(name):
    """Register the multiprocessing.Pool version of a workload: ``setup(pool) -> measure``."""

    def register(setup):
        WORKLOADS[name].mp_setup = setup
        return setup

    return register


def fmt_number(x: float) -> str:
    if x >= 1000 and float(x).is_integer():
        return f"{x / 1000:g}k" if x % 1000 == 0 else f"{x:,.0f}"
    return f"{x:g}"


# --------------------------------------------------------------------------
# Remote functions for multiprocessing.Pool (must be top-level to pickle).


def noop():
    return None


def square(i):
    return i * i


def add(*xs):
    return sum(xs)


def _add_list(xs):
    return sum(xs)


# --------------------------------------------------------------------------
# Workloads. Each setup runs after ray.init (unless fresh_process) and returns
# a measure() closure that returns one number in the workload's unit.


def ray_init(ray, **extra):
    # neither system starts its dashboard: the rows time the runtime
    kwargs = {"num_cpus": NUM_CPUS, "include_dashboard": False, **extra}
    ray.init(**kwargs)


@workload("init to first result", "s", target=0.3, warmup=0, fresh_process=True)
def init_to_first_result(ray):
    @ray.remote
    def f():
        return 1

    def measure():
        t0 = now()
        ray_init(ray)
        assert ray.get(f.remote()) == 1
        return now() - t0

    return measure


ROUND_TRIPS = 1000


@workload("sync task round trip", "µs", target=150, warmup=1)
def sync_task_round_trip(ray):
    @ray.remote
    def f():
        return None

    def measure():
        t0 = now()
        for _ in range(ROUND_TRIPS):
            ray.get(f.remote())
        return (now() - t0) / ROUND_TRIPS * 1e6

    return measure


THROUGHPUT_TASKS = 10_000


@workload("task throughput", "tasks/s", target=15_000, higher_is_better=True)
def task_throughput(ray):
    @ray.remote
    def f():
        return None

    def measure():
        t0 = now()
        refs = [f.remote() for _ in range(THROUGHPUT_TASKS)]
        ray.get(refs)
        return THROUGHPUT_TASKS / (now() - t0)

    return measure


@pool_variant("task throughput")
def task_throughput_pool(pool):
    def measure():
        t0 = now()
        results = [pool.apply_async(noop) for _ in range(THROUGHPUT_TASKS)]
        for r in results:
            r.get()
        return THROUGHPUT_TASKS / (now() - t0)

    return measure


@workload("sync actor call", "µs", target=150)
def sync_actor_call(ray):
    @ray.remote
    class Actor:
        def m(self):
            return None

    a = Actor.remote()
    ray.get(a.m.remote())  # actor creation is not timed

    def measure():
        t0 = now()
        for _ in range(ROUND_TRIPS):
            ray.get(a.m.remote())
        return (now() - t0) / ROUND_TRIPS * 1e6

    return measure


ACTOR_CALLS = 10_000


@workload("actor call throughput", "calls/s", target=20_000, higher_is_better=True)
def actor_call_throughput(ray):
    @ray.remote
    class Actor:
        def m(self):
            return None

    a = Actor.remote()
    ray.get(a.m.remote())

    def measure():
        t0 = now()
        refs = [a.m.remote() for _ in range(ACTOR_CALLS)]
        ray.get(refs)
        return ACTOR_CALLS / (now() - t0)

    return measure


def big_array():
    """100 MB of uint8 that is not zero pages (ones, written out for real)."""
    import numpy as np

    return np.ones(100 * MB, dtype=np.uint8)


@workload("put+get 100MB", "GB/s", target=5, higher_is_better=True, warmup=2)
def put_get_100mb(ray):
    arr = big_array()

    def measure():
        t0 = now()
        out = ray.get(ray.put(arr))
        dt = now() - t0
        assert out.nbytes == arr.nbytes
        del out
        return arr.nbytes / dt / 1e9

    return measure


STORED_CALLS = 100


@workload("task on stored 100MB object", "ms", target=0.5, warmup=1)
def task_on_stored_object(ray):
    arr = big_array()
    ref = ray.put(arr)
    del arr

    @ray.remote
    def f(a):
        return a.shape[0]

    def measure():
        t0 = now()
        for _ in range(STORED_CALLS):
            assert ray.get(f.remote(ref)) == 100 * MB
        return (now() - t0) / STORED_CALLS * 1e3

    return measure


MAP_TASKS = 2000
FAN_IN = 16
EXPECTED_SUM = sum(i * i for i in range(MAP_TASKS))


@workload("map-reduce 2000 tasks", "s", target=0.3)
def map_reduce(ray):
    sq = ray.remote(square)
    reduce = ray.remote(add)

    def measure():
        t0 = now()
        refs = [sq.remote(i) for i in range(MAP_TASKS)]
        while len(refs) > 1:
            refs = [reduce.remote(*refs[i:i + FAN_IN]) for i in range(0, len(refs), FAN_IN)]
        assert ray.get(refs[0]) == EXPECTED_SUM
        return now() - t0

    return measure


@pool_variant("map-reduce 2000 tasks")
def map_reduce_pool(pool):
    # A Pool cannot pass futures as arguments, so each level is fetched
    # before the next level of 16-way sums is submitted.
    def measure():
        t0 = now()
        values = pool.map(square, range(MAP_TASKS), chunksize=1)
        while len(values) > 1:
            chunks = [values[i:i + FAN_IN] for i in range(0, len(values), FAN_IN)]
            values = pool.map(_add_list, chunks, chunksize=1)
        assert values[0] == EXPECTED_SUM
        return now() - t0

    return measure


PG_ROUNDS = 200


@workload("placement group create+remove", "/s", target=2000, higher_is_better=True)
def placement_group_create_remove(ray):
    """Create a 2-bundle group, wait until it is placed, remove it; one at a
    time. Bundles are small so that no round waits for the previous one's
    resources to come back (Ray returns them asynchronously, ~1 s)."""
    util = ray.util

    def measure():
        t0 = now()
        for _ in range(PG_ROUNDS):
            pg = util.placement_group([{"CPU": 0.01}, {"CPU": 0.01}], strategy="PACK")
            ray.get(pg.ready())
            util.remove_placement_group(pg)
        return PG_ROUNDS / (now() - t0)

    return measure


SPILL_STORE = 300 * MB
SPILL_OBJECTS = 10   # of 100 MB: 1 GB through a 300 MB store


@workload("spill+restore 1GB via 300MB store", "GB/s", target=0.5, higher_is_better=True,
          init_kwargs={"object_store_memory": SPILL_STORE})
def spill_restore(ray):
    import numpy as np

    arrays = [np.full(100 * MB, i, dtype=np.uint8) for i in range(SPILL_OBJECTS)]

    def measure():
        t0 = now()
        refs = [ray.put(a) for a in arrays]         # the store overflows to disk
        for i, ref in enumerate(refs):              # and every object comes back
            out = ray.get(ref)
            assert out[0] == i and out[-1] == i
            del out
        dt = now() - t0
        del refs
        return SPILL_OBJECTS * 100 * MB / dt / 1e9

    return measure


QUEUED_TASKS = 100_000


@workload("100k queued tasks: driver memory", "MB", target=200, warmup=0, fresh_process=True)
def queued_tasks_memory(ray):
    """The driver process's RSS growth while 100k tasks are submitted (a fresh
    process each time: freed memory stays in the allocator and would hide
    the next measurement). Ray's raylet holds part of its queue outside the
    driver, which this row does not count."""
    import psutil

    @ray.remote
    def f(i):
        return i

    def measure():
        ray_init(ray)
        ray.get(f.remote(0))
        proc = psutil.Process()
        before = proc.memory_info().rss
        refs = [f.remote(i) for i in range(QUEUED_TASKS)]
        grown = proc.memory_info().rss - before
        assert ray.get(refs[-1]) == QUEUED_TASKS - 1
        del refs
        shutdown(ray, quiet=False)
        return grown / MB

    return measure


# --------------------------------------------------------------------------


def run(system: str, name: str, reps: int) -> dict:
    w = WORKLOADS[name]
    extra = {}
    if system == "mp":
        import multiprocessing

        if w.mp_setup is None:
            raise SystemExit(f"no multiprocessing.Pool variant for {name!r}")
        pool = multiprocessing.Pool(NUM_CPUS)
        try:
            samples = measure_n(w.mp_setup(pool), w.warmup, reps)
        finally:
            pool.terminate()
            pool.join()
        return result(system, w, samples, extra)

    t0 = now()
    if system == "shoal":
        import shoal as ray
    elif system == "ray":
        import ray
    else:
        raise SystemExit(f"unknown system {system!r}")
    extra["import_s"] = now() - t0
    extra["version"] = getattr(ray, "__version__", "?")

    if w.fresh_process and reps != 1:
        raise SystemExit(f"{name!r} measures a fresh process: use --reps 1")
    try:
        if w.fresh_process:
            samples = [w.setup(ray)()]
        else:
            ray_init(ray, **(w.init_kwargs or {}))
            samples = measure_n(w.setup(ray), w.warmup, reps)
    except BaseException:
        shutdown(ray)  # best effort; the workload's own error is the one reported
        raise
    extra["shutdown_s"] = shutdown(ray, quiet=False)
    return result(system, w, samples, extra)


def shutdown(ray, quiet=True):
    t0 = now()
    try:
        ray.shutdown()
    except Exception:
        if not quiet:
            raise
        print("(ray.shutdown() failed too after the error below)", file=sys.stderr)
    return now() - t0


def measure_n(measure, warmup, reps):
    for _ in range(warmup):
        measure()
    return [measure() for _ in range(reps)]


def result(system, w, samples, extra):
    return {
        "system": system,
        "workload": w.name,
        "unit": w.unit,
        "higher_is_better": w.higher_is_better,
        "samples": samples,
        "extra": extra,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--system", required=True, choices=["shoal", "ray", "mp"])
    p.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    print_result(lambda: run(args.system, args.workload, args.reps))


def print_result(compute) -> None:
    """A child's last act: print ``compute()``'s result for the runner on a
    RESULT_PREFIX line, or report its error and exit 1 at once."""
    try:
        out = compute()
    except BaseException as e:  # report, then fail
        if isinstance(e, SystemExit) and isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        else:
            traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    print(RESULT_PREFIX + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
