"""The memory monitor's logic on fakes: whom it kills (Ray's policy), how it
reads cgroup limits, and that it waits for one victim to die before the next."""
from __future__ import annotations

import threading
from collections import OrderedDict
from types import SimpleNamespace

import pytest

from shoal.node.memory_monitor import MemoryMonitor, MemorySample, pick_victim, read_memory
from shoal.node.workers import ACTOR, BUSY, IDLE, STARTING


class FakeProc:
    def __init__(self):
        self.alive = True
        self.kills = 0

    def poll(self):
        return None if self.alive else -9

    def kill(self):
        self.kills += 1


_pids = iter(range(10_000, 20_000))


def task_worker(started_at, retries_left=3, cancelled=False, name="f", state=BUSY):
    rec = SimpleNamespace(retries_left=retries_left, cancelled=cancelled, started_at=started_at,
                          spec=SimpleNamespace(name=name))
    return SimpleNamespace(state=state, actor=None, inflight=OrderedDict(t=rec), oom=None,
                           pid=next(_pids), proc=FakeProc())


def actor_worker(started_at, restarts_left=0, no_restart=False):
    actor = SimpleNamespace(started_at=started_at, restarts_left=restarts_left,
                            no_restart=no_restart, class_name="A")
    return SimpleNamespace(state=ACTOR, actor=actor, inflight=OrderedDict(), oom=None,
                           pid=next(_pids), proc=FakeProc())


def test_the_newest_retriable_task_goes_first():
    old, new = task_worker(1.0), task_worker(2.0)
    assert pick_victim([old, new]) is new


def test_a_retriable_task_goes_before_a_newer_one_without_retries():
    retriable, last_try = task_worker(1.0), task_worker(5.0, retries_left=0)
    assert pick_victim([last_try, retriable]) is retriable


def test_infinite_retries_count_as_retriable_and_cancelled_tasks_do_not():
    forever, cancelled = task_worker(1.0, retries_left=-1), task_worker(5.0, cancelled=True)
    assert pick_victim([cancelled, forever]) is forever


def test_tasks_go_before_actors_and_restartable_actors_before_others():
    last_try = task_worker(1.0, retries_left=0)
    restartable, final = actor_worker(3.0, restarts_left=1), actor_worker(9.0)
    assert pick_victim([final, restartable, last_try]) is last_try
    assert pick_victim([final, restartable]) is restartable
    assert pick_victim([final, actor_worker(4.0, restarts_left=2, no_restart=True)]) is final


def test_idle_starting_and_already_killed_workers_are_never_picked():
    killed = task_worker(9.0)
    killed.oom = object()
    idle = task_worker(8.0, state=IDLE)
    starting = task_worker(7.0, state=STARTING)
    assert pick_victim([killed, idle, starting]) is None
    assert pick_victim([]) is None


class FakeNode:
    def __init__(self, workers):
        self.lock = threading.RLock()
        self.workers = {w.pid: w for w in workers}
        self.stopped = False


def test_one_victim_at_a_time_until_its_process_is_gone():
    old, new = task_worker(1.0, name="old"), task_worker(2.0, name="new")
    node = FakeNode([old, new])
    samples = []
    monitor = MemoryMonitor(node, 0.9, 0.1, sample=lambda: samples.append(1) or
                            MemorySample(95, 100))
    assert monitor.check() is new
    assert new.proc.kills == 1 and new.oom.task_name == "new" and new.oom.used == 95
    assert new.oom.threshold == 0.9 and "SHOAL_MEMORY_USAGE_THRESHOLD" in str(new.oom.error(3))
    for _ in range(3):                      # the victim is still dying: no sample, no kill
        assert monitor.check() is None
    assert len(samples) == 1 and old.proc.kills == 0
    new.proc.alive = False                  # gone (the node drops it from its table later)
    del node.workers[new.pid]
    assert monitor.check() is old and len(samples) == 2


def test_below_the_threshold_or_after_stop_nothing_is_killed():
    w = task_worker(1.0)
    node = FakeNode([w])
    assert MemoryMonitor(node, 0.9, 0.1, sample=lambda: MemorySample(90, 100)).check() is None
    node.stopped = True
    assert MemoryMonitor(node, 0.9, 0.1, sample=lambda: MemorySample(99, 100)).check() is None
    assert w.proc.kills == 0


def test_threshold_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="memory_usage_threshold"):
        MemoryMonitor(FakeNode([]), 1.5, 0.1)


def test_a_tighter_cgroup_v2_limit_wins(tmp_path):
    gib = 2**30
    (tmp_path / "memory.max").write_text(f"{4 * gib}\n")
    (tmp_path / "memory.current").write_text(f"{3 * gib + 512}\n")
    (tmp_path / "memory.stat").write_text("anon 1\ninactive_file 512\nactive_file 9\n")
    assert read_memory(str(tmp_path)) == MemorySample(3 * gib, 4 * gib)


def test_no_cgroup_limit_means_the_machine_figures(tmp_path):
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("123\n")
    machine = read_memory(str(tmp_path / "absent"))
    sample = read_memory(str(tmp_path))
    assert sample.total == machine.total and sample.used > 123


def test_a_cgroup_v1_limit_is_read_too(tmp_path):
    mib = 2**20
    v1 = tmp_path / "memory"
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text(f"{256 * mib}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{250 * mib}\n")
    (v1 / "memory.stat").write_text(f"total_inactive_file {10 * mib}\n")
    assert read_memory(str(tmp_path)) == MemorySample(240 * mib, 256 * mib)
