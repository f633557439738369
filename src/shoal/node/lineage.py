"""Lineage reconstruction: making a lost object again by re-running the task
that made it.

What is kept. When a retriable task (``max_retries`` != 0, retries left, not
a streaming generator) finishes with a result in shared memory, its spec is
attached to its returns' entries (a ``Lineage``, object_store/table.py) and
it holds a lineage pin on each argument, so the argument's entry (not its
value) outlives its refs for as long as the result may need rebuilding.
Inline results are never lost (they live in the node's table) and keep no
lineage, so small tasks pay nothing.

When. An object is lost when the copy it had cannot be read back: today a
spill file that is missing or short; with several nodes, the node that held
it died. ``_rebuild`` then resubmits the producer's spec under the same task
id (each rebuild spends one of its retries), first rebuilding any argument
that was evicted or lost, recursively. Whoever waits on the object (a
``get``, a task's argument) simply waits for the new value. Objects made by
``put``, by actor methods, or by tasks with no retries left get an
ObjectLostError that says which of these it was.

Part of ``Node`` (a base class of it), under ``node.lock``.
"""
from __future__ import annotations

from ..exceptions import ObjectLostError, ObjectStoreFullError
from ..object_store.spill import SpillLost
from ..object_store.table import Lineage
from ..transport import messages as m


class NodeLineage:
    def _keep_lineage(self, rec) -> None:
        entries = self.objects.entries
        live = [entries[oid] for oid in rec.spec.return_ids() if oid in entries]
        if not live:
            return
        old = live[0].lineage
        if old is not None and old.spec is rec.spec:   # a rebuild: same lineage, pins held
            old.retries_left = rec.retries_left
            return
        lineage = Lineage(rec.spec, rec.retries_left, len(live))
        for e in live:
            e.lineage = lineage
        for _, dep in rec.spec.deps:
            self.objects.lineage_pin(dep)

    def _restore_or_rebuild(self, oid: bytes, e) -> None:
        """Bring a spilled object back into memory; if its copy is lost,
        rebuild it (its value is then None until the task delivers) or, when
        it cannot be rebuilt, make its value the error that says why."""
        try:
            self._restore(oid, e)
        except ObjectStoreFullError:
            pass        # left spilled: whoever ships it reports the full store
        except SpillLost as lost:
            self._on_object_lost(oid, e, str(lost))

    def _on_object_lost(self, oid: bytes, e, what: str) -> None:
        if e.value is not None and e.value[0] in (m.SHM, m.SPILLED):
            self._release_value(oid, e.value)
        e.value = None
        e.shm_offset = None
        why = self._rebuild(oid)
        if why is not None:
            e.expected = True       # set_value below needs a live entry that wants a value
            freed: list = []
            self._store(oid, self._error_value(ObjectLostError(
                f"object {oid.hex()} is lost ({what}) and cannot be rebuilt: {why}")), freed)
            self._free(freed)

    def _rebuild(self, oid: bytes) -> str | None:
        """Start re-making ``oid`` from its lineage. None when under way;
        otherwise why it cannot be."""
        e = self.objects.entries.get(oid)
        if e is None:
            return "nothing refers to it any more"
        lineage = e.lineage
        if lineage is None:
            if oid[12:] == b"\0\0\0\0":
                return "it was made by shoal.put(), which cannot be repeated"
            return ("the task that made it cannot be re-run (an actor method, a streaming "
                    "generator, or a task with max_retries=0)")
        spec = lineage.spec
        if spec.task_id in self.tasks:
            e.expected = True
            return None               # already being re-made
        if lineage.retries_left == 0:
            return (f"its task {spec.name} has no retries left (max_retries="
                    f"{spec.max_retries}); raise max_retries to let shoal rebuild it")
        if lineage.retries_left > 0:
            lineage.retries_left -= 1
        entries = self.objects.entries
        for _, dep in spec.deps:
            d = entries.get(dep)
            if d is not None and d.value is None and not d.expected:
                why = self._rebuild(dep)
                if why is not None:
                    return f"its argument {dep.hex()} is lost too and {why}"
        for rid in spec.return_ids():
            r = entries.get(rid)
            if r is not None and r.value is None:
                r.expected = True
        self._resubmit(spec, lineage.retries_left)
        return None

    def _resubmit(self, spec, retries_left: int) -> None:
        self._submit(spec, None)
        rec = self.tasks.get(spec.task_id)
        if rec is not None:
            rec.retries_left = retries_left
