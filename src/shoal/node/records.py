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
                 "route")

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


class GeneratorState:
    __slots__ = ("count", "done", "waiters", "released")

    def __init__(self):
        self.count = 0
        self.done = False
        self.waiters = []           # (index, reply)
        self.released = 0           # items below this index no longer pinned for the consumer
