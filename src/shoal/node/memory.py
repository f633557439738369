"""The node's shared memory: allocation, spilling to disk, restoring, and
what is shipped to whom.

Spilling. When an allocation does not fit, the least recently used objects
in shared memory that no process has mapped are written to the spill
directory and their memory is freed, until it fits. A spilled object's value
becomes ``(SPILLED, (path, size, layout), contained)``; it is read back into
shared memory the next time it is shipped (a ``get`` or a task argument).

Mapped. Every value the node ships from shared memory carries a lease on
``mapped_id(object_id)``: the node counts +1 under that id when it ships
(for the client: a worker's count is in ``w.held``, so its death releases
it), and the client's zero-copy views hold the lease and count -1 when the
last of them is gone (object_ref.adopted_ref). While that count is above
zero the object is in use somewhere and is never spilled; counting at ship
time leaves no window in which a view exists that the node does not know of.

Part of ``Node`` (a base class of it), under ``node.lock``. Spill and restore
run synchronously under the lock: simple and correct, at the price of
stalling the node for the time the disk takes (measured in
docs/benchmarks.md).
"""
from __future__ import annotations

import time
from collections import OrderedDict, deque

from ..exceptions import ObjectLostError, ObjectStoreFullError
from ..object_ref import MappingLease, adopted_ref
from ..object_store.spill import SpillLost
from ..object_store.table import DRIVER_OWNER
from ..scheduler.task import mapped_id
from ..transport import messages as m
from .records import FINISHED, uncount
from .services import DRIVER


class NodeMemory:
    """Shared-memory accounting for ``Node``. Expects ``self.allocator``,
    ``self.arena``, ``self.objects``, ``self.spill`` (a SpillDirectory or None),
    ``self.resident`` (an OrderedDict of ids in shared memory, least recently
    used first) and ``self.memory_waiters`` (a deque of (deadline, waiter):
    ("alloc", size, grant, reply, client), ("task", rec) or ("retry", fn,
    on_expiry))."""

    resident: OrderedDict

    # ------------------------------------------------------------ allocating
    def _alloc(self, size: int) -> int:
        """An arena offset for ``size`` bytes, spilling to make room;
        ObjectStoreFullError if even that cannot (``.waitable`` on it: the
        memory is in use now and will come back when the users let go)."""
        offset = self.allocator.alloc(size)
        if offset is not None:
            return offset
        capacity = self.allocator.capacity
        if size > capacity:
            raise ObjectStoreFullError(
                f"an object of {size / 1e6:.1f} MB is larger than the whole object store "
                f"({capacity / 1e6:.1f} MB): start shoal with a larger object_store_memory")
        why, waitable = " and spilling is off", True
        if self.spill is not None:
            try:
                offset = self._spill_until(size)
            except OSError as e:
                why, waitable = f" and spilling to {self.spill.path} failed ({e})", False
            else:
                if offset is not None:
                    return offset
                why = ", and every object in it is in use (mapped by a process)"
        err = ObjectStoreFullError(
            f"the object store has no room for an object of {size / 1e6:.1f} MB: "
            f"{self.allocator.used_bytes / 1e6:.1f} MB of {capacity / 1e6:.1f} MB in use{why}. "
            f"Free references to objects you no longer need (and arrays built on them), or "
            f"start shoal with a larger object_store_memory.")
        err.waitable = waitable
        raise err

    def _svc_alloc(self, client, request_id, reply, size) -> None:
        def grant(offset):
            if client is not DRIVER:
                client.allocs.add(offset)   # freed by the node if the worker dies first
            reply(True, offset)
        try:
            grant(self._alloc(size))
        except ObjectStoreFullError as err:
            if not getattr(err, "waitable", False):
                raise
            # in use now; wait (bounded) for tasks and views to let go, as Ray does
            self._wait_for_memory(("alloc", size, grant, reply, client))

    def _svc_free_alloc(self, client, request_id, reply, offset) -> None:
        if client is not DRIVER:
            client.allocs.discard(offset)
        self.allocator.free(offset)
        self._memory_released()

    # ------------------------------------------------ waiting for memory
    def _wait_for_memory(self, waiter: tuple, deadline: float | None = None) -> None:
        """Park an allocation or a task until memory comes back (see
        ``_memory_released``), or fail it after object_store_full_timeout_s."""
        if deadline is None:
            deadline = time.monotonic() + self.store_full_timeout
        self.memory_waiters.append((deadline, waiter))
        self._arm_memory_expiry()

    def _arm_memory_expiry(self) -> None:
        if not self.memory_expiry_armed:
            self.memory_expiry_armed = True
            self.loop.call_later(0.2, self._expire_memory_waiters)

    def _memory_released(self) -> None:
        if self.memory_waiters and not self.memory_retry_pending:
            self.memory_retry_pending = True
            self.loop.call_soon(self._serve_memory_waiters)

    def _serve_memory_waiters(self) -> None:
        with self.lock:
            self.memory_retry_pending = False
            freed: list = []
            self._apply_local_deltas(freed)
            self._free(freed)
            waiting, self.memory_waiters = self.memory_waiters, deque()
            blocked = False
            retries = []
            for deadline, waiter in waiting:
                if waiter[0] == "task":          # it tries again when scheduled
                    if waiter[1].state != FINISHED:
                        self._requeue(waiter[1])
                    continue
                if waiter[0] == "retry":         # runs again; parks again if still no room
                    retries.append(waiter[1])
                    continue
                if not blocked:
                    try:
                        offset = self._alloc(waiter[1])
                    except ObjectStoreFullError:
                        blocked = True           # first come, first served
                    else:
                        waiter[2](offset)
                        continue
                self.memory_waiters.append((deadline, waiter))
            for retry in retries:
                retry()
            self._schedule()
            if self.memory_waiters:
                self._arm_memory_expiry()

    def _expire_memory_waiters(self) -> None:
        with self.lock:
            self.memory_expiry_armed = False
            now = time.monotonic()
            keep = deque()
            for deadline, waiter in self.memory_waiters:
                if deadline > now:
                    keep.append((deadline, waiter))
                    continue
                if waiter[0] == "alloc":
                    try:
                        waiter[2](self._alloc(waiter[1]))
                    except ObjectStoreFullError as full:
                        waiter[3](False, ObjectStoreFullError(
                            f"waited {self.store_full_timeout:g} s for room "
                            f"(object_store_full_timeout_s), in vain: {full}"))
                    continue
                err = ObjectStoreFullError(
                    f"the object store stayed full for {self.store_full_timeout:g} s "
                    f"(object_store_full_timeout_s): {self.allocator.used_bytes / 1e6:.1f} MB "
                    f"of {self.allocator.capacity / 1e6:.1f} MB are in use by running tasks and "
                    f"live arrays. Free references you no longer need, run fewer tasks at once, "
                    f"or start shoal with a larger object_store_memory.")
                if waiter[0] == "retry":
                    waiter[2](err)
                elif waiter[1].state != FINISHED:
                    self._finish(waiter[1], self._error_value(err))
            self.memory_waiters = keep
            if keep:
                self._arm_memory_expiry()

    # ------------------------------------------------------------- spilling
    def _is_mapped(self, oid: bytes) -> bool:
        e = self.objects.entries.get(mapped_id(oid))
        return e is not None and e.refs > 0

    def _spill_until(self, size: int) -> int | None:
        """Spill unmapped objects, oldest use first, until ``size`` fits."""
        freed: list = []
        self._apply_local_deltas(freed)     # views the driver dropped since its last call
        self._free(freed)
        offset = self.allocator.alloc(size)
        if offset is not None:
            return offset
        entries = self.objects.entries
        for oid in list(self.resident):
            if self._is_mapped(oid):
                continue
            e = entries.get(oid)
            if e is None or e.value is None or e.value[0] != m.SHM:
                self.resident.pop(oid, None)
                continue
            self._spill(oid, e)
            offset = self.allocator.alloc(size)
            if offset is not None:
                return offset
        return None

    def _spill(self, oid: bytes, e) -> None:
        kind, (offset, size, layout), contained = e.value
        path = self.spill.write(oid, self.arena.writable(offset, size))
        self.allocator.free(offset)
        e.value = (m.SPILLED, (path, size, layout), contained)
        e.shm_offset = None
        del self.resident[oid]

    def _restore(self, oid: bytes, e) -> tuple:
        """Read a spilled object back into shared memory and return its value.
        Raises ObjectStoreFullError (no room, it stays spilled) or SpillLost
        (its file is gone: see lineage.py)."""
        path, size, layout = e.value[1]
        offset = self._alloc(size)
        try:
            self.spill.read(path, self.arena.writable(offset, size))
        except SpillLost:
            self.allocator.free(offset)
            raise
        self.spill.delete(path, size)
        e.value = (m.SHM, (offset, size, layout), e.value[2])
        e.shm_offset = offset
        self.resident[oid] = None
        return e.value

    # -------------------------------------------------------------- shipping
    def _ship(self, oid: bytes, value: tuple, client, raise_full: bool = False) -> tuple:
        """``value`` as it goes to ``client``: restored if spilled, and with a
        lease that marks it mapped while the client's views live. No room to
        restore it: an ERROR value, or ObjectStoreFullError if ``raise_full``."""
        kind = value[0]
        if kind == m.SPILLED:
            try:
                value = self._restore(oid, self.objects.entries[oid])
            except ObjectStoreFullError as err:
                if raise_full:
                    raise
                return self._error_value(err)
            except SpillLost as err:      # callers restore first (lineage.py): rare
                return self._error_value(ObjectLostError(f"object {oid.hex()} is lost: {err}"))
            kind = value[0]
        if kind != m.SHM:
            return value
        mid = mapped_id(oid)
        self.resident.move_to_end(oid)
        return (m.SHM, value[1], value[2], self._lease(client, mid))

    def _lease(self, client, oid: bytes):
        """A ref to ``oid`` counted here for ``client``, to send it: it
        becomes an ObjectRef there that logs only its -1."""
        self.objects.add_ref(oid)
        if client is DRIVER:
            return adopted_ref(oid)       # its -1 arrives through the driver's ref log
        client.held[oid] = client.held.get(oid, 0) + 1
        return MappingLease(oid)          # unpickles in the worker as an adopted ref

    def _reply_values(self, client, ids, reply, deadline: float | None = None) -> None:
        """Answer a get: restore what is spilled, ship, reply. With no room
        to restore while the store is full of objects in use, wait for room
        (bounded, as allocations do) instead of failing the get."""
        if client is not DRIVER and client.state == "dead":
            return
        entries = self.objects.entries
        if self.view is not None and self._fetch_first(ids, lambda: self._reply_values(
                client, ids, reply, deadline)):
            return
        try:
            for oid in ids:
                e = entries.get(oid)
                if e is not None and e.value is not None and e.value[0] == m.SPILLED:
                    self._restore(oid, e)
        except ObjectStoreFullError as err:
            if getattr(err, "waitable", False):
                if deadline is None:
                    deadline = time.monotonic() + self.store_full_timeout
                self._wait_for_memory(
                    ("retry", lambda: self._reply_values(client, ids, reply, deadline),
                     lambda full: reply(False, full)), deadline)
                return
        except SpillLost:
            pass           # _ship reports it (callers rebuild lost objects before this)
        reply(True, self._ship_many(ids, client))

    def _unship(self, oid: bytes, client) -> None:
        """Take back a ship whose value never left the node."""
        mid = mapped_id(oid)
        if client is not DRIVER:
            uncount(client.held, mid, 1)
        freed: list = []
        self.objects.remove_ref(mid, 1, freed)
        self._free(freed)

    def _ship_many(self, ids, client) -> list:
        entries = self.objects.entries
        ship = self._ship
        return [v if (v := entries[oid].value)[0] == m.INLINE else ship(oid, v, client)
                for oid in ids]

    def _release_value(self, oid: bytes | None, value: tuple) -> None:
        """The memory or file behind a value nobody will read again."""
        kind = value[0]
        if kind == m.SHM:
            self.allocator.free(value[1][0])
            if oid is not None:
                self.resident.pop(oid, None)
            self._memory_released()
        elif kind == m.SPILLED:
            self.spill.delete(value[1][0], value[1][1])

    # ---------------------------------------------------------- observability
    def _svc_memory(self, client, request_id, reply) -> None:
        reply(True, self.memory_report())

    def memory_report(self) -> dict:
        """Every object the node knows: size, where it lives, who holds it."""
        holders: dict = {}
        for w in self.workers.values():
            for oid, n in w.held.items():
                holders.setdefault(oid, []).append((w.pid, n))
        rows = []
        entries = self.objects.entries
        for oid, e in entries.items():
            if oid[12] & 0x80:
                continue            # a mapped-count entry, reported with its object
            value = e.value
            kind = value[0] if value is not None else None
            size = (value[1][1] if kind in (m.SHM, m.SPILLED, m.REMOTE)
                    else len(value[1][0]) if value is not None else 0)
            where = {m.SHM: "SHARED_MEMORY", m.SPILLED: "SPILLED", m.INLINE: "INLINE",
                     m.ERROR: "ERROR", m.REMOTE: "REMOTE",
                     None: "PENDING" if e.expected else "EVICTED"}[kind]
            by_pid = dict(holders.get(oid, ()))
            driver_refs = e.refs - sum(by_pid.values())
            mapped = entries.get(mapped_id(oid))
            owner, owner_pid = self._owner_of(oid, e)
            rows.append({
                "object_id": oid.hex(), "size": size, "where": where,
                "owner": owner, "owner_pid": owner_pid,
                "refs": e.refs, "driver_refs": driver_refs, "worker_refs": by_pid,
                "pins": e.pins, "mapped": mapped.refs if mapped is not None else 0,
                "task": e.maker or self._producer_name(oid),
                "lineage": e.lineage is not None,
                "spill_path": value[1][0] if kind == m.SPILLED else None,
            })
        spill = self.spill
        return {
            "objects": rows,
            "store_capacity": self.allocator.capacity,
            "store_used": self.allocator.used_bytes,
            "spilled_bytes": spill.bytes if spill else 0,
            "spilled_total": spill.spilled_total if spill else 0,
            "restored_total": spill.restored_total if spill else 0,
            "spill_directory": spill.created_path if spill else None,
        }

    def _owner_of(self, oid: bytes, e) -> tuple[str, int | None]:
        """Who made the object here, for a reader: (text, pid or None)."""
        owner = e.owner
        if owner is None and oid[12:] != b"\0\0\0\0":
            first = self.objects.get(oid[:12] + b"\0\0\0\1")   # a generator's items
            owner = first.owner if first is not None else None
        if owner is None:
            return "", None
        if owner is DRIVER_OWNER:
            return f"driver pid {self.driver_pid}", self.driver_pid
        if owner.is_peer:
            return f"node {owner.node_id.hex()}", None
        if owner.proc is None:
            return f"driver pid {owner.pid}", owner.pid
        if owner.actor is not None:
            return f"actor {owner.actor.class_name} pid {owner.pid}", owner.pid
        return f"worker pid {owner.pid}", owner.pid

    def _producer_name(self, oid: bytes) -> str:
        if oid[12:] == b"\0\0\0\0":
            return "put"
        rec = self.tasks.get(oid[:12])
        if rec is not None:
            return rec.spec.name
        actor = self.actors.get(oid[:12])
        return actor.class_name if actor is not None else ""
