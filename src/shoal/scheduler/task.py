"""Task specs: what to run, with what, needing which resources.

One class covers the three kinds of work: a task, an actor's creation and an
actor method call. Specs travel as plain tuples (``to_wire``), which pickle
several times faster than objects; the field order here is the wire layout.
"""
from __future__ import annotations

import itertools
import os
import struct

TASK = 0
ACTOR_CREATE = 1
ACTOR_CALL = 2

STREAMING = -1          # num_returns of a streaming generator

_prefix = os.urandom(8)
_counter = itertools.count(1)
_pack_index = struct.Struct(">I").pack


def reset_id_prefix() -> None:
    """A new process (or a fork) must not reuse its parent's id space."""
    global _prefix, _counter
    _prefix = os.urandom(8)
    _counter = itertools.count(1)


def new_task_id() -> bytes:
    return _prefix + next(_counter).to_bytes(4, "big")


def object_id_for(task_id: bytes, index: int) -> bytes:
    """The id of a task's ``index``-th return (1-based); index 0 is a put."""
    return task_id + _pack_index(index)


def mapped_id(object_id: bytes) -> bytes:
    """The id under which processes count their live views of an object's
    shared memory (the index's top bit set): while it has refs, the object
    is mapped somewhere and may not be spilled."""
    return object_id[:12] + bytes((object_id[12] | 0x80,)) + object_id[13:]


def new_put_id() -> bytes:
    return new_task_id() + b"\0\0\0\0"


_FIELDS = ("task_id", "kind", "function_id", "name", "args", "args_layout", "deps",
           "num_returns", "resources", "max_retries", "retry_exceptions", "contained",
           "parent_id", "actor_id", "method", "options", "job_id")


class TaskSpec:
    __slots__ = _FIELDS

    def __init__(self, task_id, kind, function_id, name, args, args_layout, deps,
                 num_returns, resources, max_retries, retry_exceptions, contained,
                 parent_id, actor_id, method, options, job_id=None):
        self.task_id = task_id
        self.kind = kind
        self.function_id = function_id
        self.name = name
        self.args = args                      # packed (args, kwargs), refs at deps replaced
        self.args_layout = args_layout
        self.deps = deps                      # ((position or keyword, object_id), ...)
        self.num_returns = num_returns
        self.resources = resources            # {"CPU": 1.0, ...}
        self.max_retries = max_retries
        self.retry_exceptions = retry_exceptions  # False, True or a pickled tuple of classes
        self.contained = contained            # ids of refs nested inside the args
        self.parent_id = parent_id
        self.actor_id = actor_id
        self.method = method
        self.options = options                # rarely used options (actors), or None
        self.job_id = job_id                  # the job whose program submitted it (bytes)

    def to_wire(self) -> tuple:
        return (self.task_id, self.kind, self.function_id, self.name, self.args,
                self.args_layout, self.deps, self.num_returns, self.resources,
                self.max_retries, self.retry_exceptions, self.contained, self.parent_id,
                self.actor_id, self.method, self.options, self.job_id)

    @classmethod
    def from_wire(cls, t: tuple) -> "TaskSpec":
        return cls(*t)

    def return_ids(self) -> list[bytes]:
        n = 1 if self.num_returns == STREAMING else self.num_returns
        return [self.task_id + _pack_index(i) for i in range(1, n + 1)]
