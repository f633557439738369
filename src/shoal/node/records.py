"""The node's record of each task (and of a streaming task's items).

Plain data, owned by the node and touched only under ``node.lock``.
"""
from __future__ import annotations

import time

from ..scheduler.task import TaskSpec

QUEUED, WAITING_DEPS, RUNNING, FINISHED = "queued", "waiting", "running", "finished"
HERE = "here"       # a TaskRecord.route: run on this node, never forward (node/peers.py)
WAIT = object()     # _forward_first: the task must wait for its node's link
NODE_GONE = object()  # _forward_first: hard affinity to a node that died


def uncount(counts: dict, key, n: int) -> None:
    """Take ``n`` off ``counts[key]``, dropping the key at zero (the refs a
    client holds, the copies lent over a link)."""
    left = counts.get(key, 0) - n
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class TaskRecord:
    __slots__ = ("spec", "state", "retries_left", "worker", "deps_left", "request", "key",
                 "cancelled", "children", "gen", "submitted_at", "placement", "started_at",
                 "route", "ready_at", "run_start", "run_end", "failure")

    def __init__(self, spec: TaskSpec, request: dict, key):
        self.spec = spec
        self.state = WAITING_DEPS
        self.retries_left = spec.max_retries
        self.worker = None
        self.deps_left = 0
        self.request = request      # quantized resources
        self.key = key              # (submitter, [placement,] resource shape...): its queue
        self.cancelled = False
        self.children = None
        self.gen = None             # GeneratorState for streaming tasks
        self.submitted_at = time.time()
        self.placement = None       # (pg_id, bundle_index, capture) when in a placement group
        self.started_at = 0.0       # time.monotonic() when last sent to a worker
        self.route = None           # which nodes may run it (node/peers.py), in a cluster
        # its lifecycle, for the state API (node/introspect.py); cheap to keep:
        self.ready_at = 0.0         # time.time() when its arguments were all ready
        self.run_start = 0.0        # its run, as its worker measured it (time.time());
        self.run_end = 0.0          # for a task the node ended itself, the end only
        self.failure = None         # (type, message, traceback) from its worker, or ERROR value


class _Nobody:
    """The worker of a task that never had one (it failed while it waited)."""
    pid = row_id = None
    is_peer = False


_NOBODY = _Nobody()


def ended_row(rec: TaskRecord) -> tuple:      # hot: every task's end
    """What a node keeps of a task once it has ended (its history, read by
    node/introspect.py): one flat tuple of plain values (ids, numbers,
    strings, the worker's (type, message, traceback) of a failure). Keeping it costs
    one small allocation per task, never the task's argument bytes, and the
    garbage collector stops tracking such a tuple the first time it sees
    it; rows holding live objects stayed tracked and made every collection
    slower (measured: docs/benchmarks.md)."""
    spec = rec.spec
    w = rec.worker or _NOBODY
    return (spec.task_id, spec.kind, spec.name, spec.actor_id, spec.parent_id,
            rec.submitted_at, rec.ready_at, rec.started_at, rec.run_start, rec.run_end,
            rec.failure, w.pid, w.row_id, w.is_peer, spec.max_retries, rec.retries_left,
            rec.placement, spec.job_id)


class GeneratorState:
    __slots__ = ("count", "done", "waiters", "released")

    def __init__(self):
        self.count = 0
        self.done = False
        self.waiters = []           # (index, reply)
        self.released = 0           # items below this index no longer pinned for the consumer
