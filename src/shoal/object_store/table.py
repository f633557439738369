"""The node's object table: each object's value and who keeps it alive.

No I/O here; the node calls it under its lock and acts on what it returns.

An object is alive while anything holds it:
- ``refs``: ObjectRef instances in any process (workers report the counts
  that changed in REFS messages; the driver's are applied in process);
- ``pins``: the node's own holds: a task that takes the object as an
  argument (until the task ends), an object whose value contains a ref to it
  (until that object is freed), an actor call on the actor's handle object.
When both reach zero the entry is freed and the node releases its shared
memory and the pins its value held on other objects. An entry whose value
has not arrived yet is freed the same way; the value is then dropped when
it comes.

Lineage. A finished retriable task's spec stays attached to its returns
(``lineage``, a Lineage record) while any of them is alive, so a lost copy
can be made again by re-running the task. That may need the task's
arguments again, so the spec holds ``lineage_pins`` on them: an entry with
lineage pins but no refs or pins loses its value (evicted: memory released)
but keeps its entry, so that it too can be rebuilt. The entry goes when its
last lineage pin does.
"""
from __future__ import annotations

from ..transport.messages import SHM


class Lineage:
    """How to make a task's returns again: its spec, the retries it has left,
    and how many of its returns still have entries."""
    __slots__ = ("spec", "retries_left", "live")

    def __init__(self, spec, retries_left: int, live: int):
        self.spec = spec
        self.retries_left = retries_left
        self.live = live


DRIVER_OWNER = "driver"       # an entry's owner: the driver in the node's own process


class ObjectEntry:
    __slots__ = ("value", "refs", "pins", "waiters", "shm_offset", "expected", "lineage",
                 "lineage_pins", "maker", "origins", "owner")

    def __init__(self):
        self.expected = False    # a task or put will produce it (else only refs named it)
        self.value = None        # the wire value (kind, payload, contained) once known
        self.refs = 0
        self.pins = 0
        self.waiters = None      # callbacks(object_id, entry) to run when the value arrives
        self.shm_offset = None
        self.lineage = None      # the Lineage that can rebuild it, if any
        self.lineage_pins = 0    # finished tasks' specs that name it as an argument
        self.maker = None        # the name of the task that makes it (for memory reports)
        self.origins = None      # {peer link: copies it sent us} for a borrowed value (peers.py)
        # who made it here (memory reports): the submitting or putting client
        # (a worker or driver record, a peer link) or DRIVER_OWNER; None: unknown
        self.owner = None


class ObjectTable:
    def __init__(self):
        self.entries: dict[bytes, ObjectEntry] = {}

    def __len__(self):
        return len(self.entries)

    def get(self, object_id: bytes) -> ObjectEntry | None:
        return self.entries.get(object_id)

    def ensure(self, object_id: bytes) -> ObjectEntry:
        e = self.entries.get(object_id)
        if e is None:
            e = self.entries[object_id] = ObjectEntry()
        return e

    def expect(self, object_id: bytes, maker: str | None = None, owner=None) -> None:
        """A task that produces ``object_id`` (called ``maker``) was submitted
        (by ``owner``)."""
        e = self.ensure(object_id)
        e.expected = True
        if maker is not None:
            e.maker = maker
            e.owner = owner

    def is_lost(self, object_id: bytes) -> bool:
        """No value and nothing will produce one: the ref outlived its object
        (e.g. it was unpickled from bytes saved earlier)."""
        e = self.entries.get(object_id)
        return e is None or (e.value is None and not e.expected)

    def set_value(self, object_id: bytes, value: tuple):
        """Store a value. Returns (entry, waiters to call) or (None, None) when
        nobody wants the object any more (the caller then discards the value)."""
        e = self.entries.get(object_id)
        if e is None:
            return None, None
        if e.value is not None:
            return e, None      # a retried task delivered twice; the first value stands
        e.value = value
        if value[0] == SHM:
            e.shm_offset = value[1][0]
        waiters, e.waiters = e.waiters, None
        return e, waiters

    def add_waiter(self, object_id: bytes, callback) -> bool:
        """Call ``callback`` when the value arrives; False if it already has."""
        e = self.ensure(object_id)
        if e.value is not None:
            return False
        if e.waiters is None:
            e.waiters = [callback]
        else:
            e.waiters.append(callback)
        return True

    def remove_waiter(self, object_id: bytes, callback) -> None:
        e = self.entries.get(object_id)
        if e is not None and e.waiters:
            try:
                e.waiters.remove(callback)
            except ValueError:
                pass

    def add_ref(self, object_id: bytes, n: int = 1) -> None:
        self.ensure(object_id).refs += n

    def remove_ref(self, object_id: bytes, n: int, freed: list) -> None:
        e = self.entries.get(object_id)
        if e is not None:
            e.refs -= n
            if e.refs <= 0 and e.pins <= 0:
                self._free(object_id, e, freed)

    def pin(self, object_id: bytes) -> None:
        self.ensure(object_id).pins += 1

    def unpin(self, object_id: bytes, freed: list) -> None:
        e = self.entries.get(object_id)
        if e is not None:
            e.pins -= 1
            if e.refs <= 0 and e.pins <= 0:
                self._free(object_id, e, freed)

    def lineage_pin(self, object_id: bytes) -> None:
        e = self.entries.get(object_id)
        if e is not None:
            e.lineage_pins += 1

    def lineage_unpin(self, object_id: bytes, freed: list) -> None:
        e = self.entries.get(object_id)
        if e is not None:
            e.lineage_pins -= 1
            if e.refs <= 0 and e.pins <= 0:
                self._free(object_id, e, freed)

    def release_if_unheld(self, object_id: bytes, freed: list) -> None:
        e = self.entries.get(object_id)
        if e is not None and e.refs <= 0 and e.pins <= 0:
            self._free(object_id, e, freed)

    def _free(self, object_id: bytes, e: ObjectEntry, freed: list) -> None:
        """Queue ``e`` for the node to release: its value, and the entry
        itself unless lineage still names it (then only evicted)."""
        if e.waiters:
            return  # someone is blocked on it right now; freed once they are done
        if e.lineage_pins > 0:
            if e.value is not None:
                freed.append((object_id, e))    # the node releases the value, keeps the entry
            return
        del self.entries[object_id]
        freed.append((object_id, e))
