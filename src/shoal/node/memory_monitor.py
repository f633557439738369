"""The memory monitor: kill one worker before the machine runs out of memory.

Every ``memory_monitor_interval_s`` a timer on the node's loop thread samples
the memory in use (the machine's, or its cgroup's when that limit is
tighter). Above ``memory_usage_threshold`` it SIGKILLs one worker, chosen as
Ray's monitor does: a task that can be retried before one that cannot, tasks
before actors, and among equals the one that started most recently (it has
the least work to lose). The driver is never a candidate.

The kill is recorded on the worker (``WorkerRecord.oom``, an ``OomKill``);
the node's usual worker-death path (``Node._on_worker_lost``) then retries
the task or fails it with ``OutOfMemoryError``, and an actor dies or
restarts with the reason in its death message. No kill storms: while a
victim's process is still alive the monitor waits, and memory is sampled
again after it is gone before anyone else is chosen.

Sampling reads /proc and cgroup files outside ``node.lock``; choosing and
killing happen under it. ``pick_victim`` is pure policy, tested on fakes.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import psutil

from .. import config
from ..exceptions import OutOfMemoryError
from .workers import ACTOR, BUSY

CGROUP_DIR = "/sys/fs/cgroup"

# victim classes, tried in this order
RETRIABLE_TASK, TASK, RESTARTABLE_ACTOR, ACTOR_WORKER = range(4)


@dataclasses.dataclass(frozen=True)
class MemorySample:
    used: int
    total: int

    @property
    def fraction(self) -> float:
        return self.used / self.total


def read_memory(cgroup_dir: str = CGROUP_DIR) -> MemorySample:
    """Memory in use now: the machine's (total minus available, as Ray counts
    it), or the cgroup's when a cgroup limit is set and is the tighter one."""
    vm = psutil.virtual_memory()
    machine = MemorySample(vm.total - vm.available, vm.total)
    group = _read_cgroup(Path(cgroup_dir))
    if group is not None and group.total < machine.total and group.fraction > machine.fraction:
        return group
    return machine


def _read_cgroup(root: Path) -> MemorySample | None:
    """cgroup v2 (memory.max, memory.current) or v1 (memory/memory.limit_in_bytes);
    None without a limit. Inactive file pages can be reclaimed, so like Ray
    (and the kernel's own OOM decision) they do not count as used."""
    for limit_file, usage_file, stat_key in (
            (root / "memory.max", root / "memory.current", "inactive_file"),
            (root / "memory" / "memory.limit_in_bytes", root / "memory" / "memory.usage_in_bytes",
             "total_inactive_file")):
        try:
            limit = limit_file.read_text().strip()
            usage = int(usage_file.read_text())
        except (OSError, ValueError):
            continue
        if not limit.isdigit() or int(limit) == 0:
            return None      # "max": no limit
        inactive = _stat_value(limit_file.parent / "memory.stat", stat_key)
        return MemorySample(max(0, usage - inactive), int(limit))
    return None


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


@dataclasses.dataclass(frozen=True)
class OomKill:
    """Why the monitor killed a worker; read by the worker-death path."""
    task_name: str
    pid: int
    used: int
    total: int
    threshold: float

    def memory_text(self) -> str:
        return (f"memory used on the node was {_gib(self.used)} of {_gib(self.total)} "
                f"({self.used / self.total:.4g}), above the threshold {self.threshold:.4g} "
                f"(setting memory_usage_threshold, env "
                f"{config.SETTINGS['memory_usage_threshold'].env_var})")

    def describe(self) -> str:
        """The worker's exit, for WorkerCrashedError-style and actor death messages."""
        return (f"the process (pid={self.pid}) was killed (SIGKILL) by shoal's memory "
                f"monitor while running {self.task_name}: {self.memory_text()}")

    def error(self, max_retries: int) -> OutOfMemoryError:
        """The error a task gets when it was killed and its retries are spent."""
        interval_env = config.SETTINGS["memory_monitor_interval_s"].env_var
        return OutOfMemoryError(
            f"Task {self.task_name} was killed by shoal's memory monitor to keep the machine "
            f"from running out of memory, and its retries (max_retries={max_retries}) are "
            f"spent. When its worker (pid={self.pid}) was killed, {self.memory_text()}. "
            f"Use less memory per task, run fewer such tasks at once (ask for more num_cpus "
            f"or memory= per task), allow more retries, or raise the threshold; "
            f"{interval_env}=0 turns the monitor off.")


def victim_rank(w):
    """(class, started_at) of a worker that may be killed, or None if it may not.
    Lower class first, then the most recent start."""
    if w.oom is not None or w.pid == os.getpid():
        return None
    if w.state == BUSY and w.actor is None and w.inflight:
        rec = next(iter(w.inflight.values()))     # the running one; the rest are queued
        retriable = rec.retries_left != 0 and not rec.cancelled
        return (RETRIABLE_TASK if retriable else TASK), rec.started_at
    if w.state == ACTOR and w.actor is not None:
        actor = w.actor
        restartable = not actor.no_restart and actor.restarts_left != 0
        return (RESTARTABLE_ACTOR if restartable else ACTOR_WORKER), actor.started_at
    return None      # idle, starting, retiring or dead: nothing to gain


def pick_victim(workers):
    """The worker to kill among ``workers`` (Ray's policy), or None."""
    best, best_key = None, None
    for w in workers:
        rank = victim_rank(w)
        if rank is None:
            continue
        key = (rank[0], -rank[1])
        if best_key is None or key < best_key:
            best, best_key = w, key
    return best


def running_task_name(w) -> str:
    if w.inflight:
        return next(iter(w.inflight.values())).spec.name
    return w.actor.class_name if w.actor is not None else "?"


class MemoryMonitor:
    """Owned by the node; its timer stops when the node stops."""

    def __init__(self, node, threshold: float, interval: float, sample=read_memory):
        if not 0 < threshold <= 1:
            raise ValueError(f"memory_usage_threshold must be in (0, 1], not {threshold}")
        self.node = node
        self.threshold = threshold
        self.interval = interval
        self.sample = sample
        self.victim = None          # the last worker killed, until its process is gone

    @classmethod
    def start_for(cls, node) -> "MemoryMonitor | None":
        """Start the monitor from the settings; None when it is turned off."""
        interval = config.get("memory_monitor_interval_s")
        if interval <= 0:
            return None
        monitor = cls(node, config.get("memory_usage_threshold"), interval)
        node.loop.call_later(interval, monitor._tick)
        return monitor

    def _tick(self) -> None:
        if self.node.stopped:
            return
        try:
            self.check()
        finally:
            self.node.loop.call_later(self.interval, self._tick)

    def check(self):
        """Sample memory and kill one worker if it is above the threshold.
        Returns the worker killed, or None."""
        victim = self.victim
        if victim is not None:
            if victim.proc.poll() is None:
                return None         # still dying: its memory is not back yet
            self.victim = None
        sample = self.sample()
        if sample.used <= self.threshold * sample.total:
            return None
        node = self.node
        with node.lock:
            if node.stopped:
                return None
            victim = pick_victim(list(node.workers.values()))
            if victim is None:
                return None
            kill = OomKill(running_task_name(victim), victim.pid, sample.used, sample.total,
                           self.threshold)
            victim.oom = kill
            victim.proc.kill()
            self.victim = victim
        print(f"shoal: memory monitor killed worker pid={kill.pid} running {kill.task_name}: "
              f"{_gib(kill.used)} of {_gib(kill.total)} used ({sample.fraction:.4g} > "
              f"threshold {self.threshold:.4g})", file=sys.stderr, flush=True)
        return victim
