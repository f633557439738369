"""ObjectRef: a future naming an object, counted wherever it lives.

Every ObjectRef instance counts as one reference to its object. Creating and
deleting one appends (id, +1/-1) to this process's ref log (``_log``), a
deque, since appends are atomic and ``__del__`` may run on any thread at any
time (even inside the node's lock). The driver's node applies the log in
order; a worker sends the changes to its node in REFS messages.
"""
from __future__ import annotations

import asyncio
from collections import deque

from .serialization.pickler import note_ref

_log: deque = deque(maxlen=None)


def set_ref_log(log: deque) -> None:
    global _log
    _log = log


class ObjectRef:
    __slots__ = ("id", "__weakref__")

    def __init__(self, object_id: bytes):
        self.id = object_id
        _log.append((object_id, 1))

    def __del__(self):
        try:
            _log.append((self.id, -1))
        except Exception:
            pass  # interpreter teardown

    def __reduce__(self):
        note_ref(self.id)
        return (ObjectRef, (self.id,))

    def binary(self) -> bytes:
        return self.id

    def hex(self) -> str:
        return self.id.hex()

    def task_id(self) -> bytes:
        return self.id[:12]

    def __eq__(self, other):
        return isinstance(other, ObjectRef) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"ObjectRef({self.id.hex()})"

    def __call__(self, *args, **kwargs):
        raise TypeError("an ObjectRef is not callable: call shoal.get(ref) for its value")

    def future(self):
        """A concurrent.futures.Future that resolves to the object's value."""
        from .core import get_core
        return get_core().get_future(self)

    def __await__(self):
        return asyncio.wrap_future(self.future()).__await__()


def adopted_ref(object_id: bytes) -> ObjectRef:
    """A ref whose +1 the node already counted on this process's behalf
    (node/memory.py, ``_ship``): it logs only its -1, when it dies."""
    ref = ObjectRef.__new__(ObjectRef)
    ref.id = object_id
    return ref


class MappingLease:
    """The node's stand-in for an adopted ref in a message to a worker: it
    unpickles there as ``adopted_ref(id)``."""
    __slots__ = ("id",)

    def __init__(self, object_id: bytes):
        self.id = object_id

    def __reduce__(self):
        return (adopted_ref, (self.id,))


class ObjectRefGenerator:
    """What a streaming generator task returns: iterate it (sync or async) to
    receive an ObjectRef for each item as soon as the task yields it."""

    def __init__(self, task_ref: ObjectRef):
        self._task_ref = task_ref      # keeps the task's completion object alive
        self._index = 0
        self._held = None

    def _task_id(self) -> bytes:
        return self._task_ref.id[:12]

    def __iter__(self):
        return self

    def __next__(self) -> ObjectRef:
        return self._next_sync(None)

    def _next_sync(self, timeout):
        from .core import get_core
        oid = get_core().generator_next(self._task_id(), self._index, timeout)
        return self._advance(oid)

    def _advance(self, oid):
        if oid is None:
            raise StopIteration
        ref = ObjectRef(oid)
        self._index += 1
        return ref

    def __aiter__(self):
        return self

    async def __anext__(self) -> ObjectRef:
        from .core import get_core
        fut = get_core().generator_next_future(self._task_id(), self._index)
        oid = await asyncio.wrap_future(fut)
        try:
            return self._advance(oid)
        except StopIteration:
            raise StopAsyncIteration from None

    def completed(self) -> ObjectRef:
        """A ref that resolves when the generator task has finished."""
        return self._task_ref

    def __repr__(self):
        return f"ObjectRefGenerator({self._task_id().hex()})"


# Ray's name for the same thing
DynamicObjectRefGenerator = ObjectRefGenerator
