"""Looking inside the running cluster (Ray's ``ray.util.state`` names).

So far: objects. ``list_objects()`` lists every object the node knows with
its size, where it lives (shared memory, spilled to disk, inline, pending)
and who holds it; ``shoal.internal_memory_summary()`` prints the same as a
table with the store's totals.
"""
from __future__ import annotations

from ..core import get_core


def memory_report() -> dict:
    """The node's objects and store totals (see node/memory.py)."""
    return get_core().request("memory")


def list_objects(filters: list | None = None, limit: int = 10000) -> list[dict]:
    """One dict per object: object_id, size, where (SHARED_MEMORY, SPILLED,
    INLINE, ERROR, PENDING, EVICTED: value freed, kept only as lineage for
    rebuilding a result), refs (total), driver_refs, worker_refs
    ({pid: count}), pins (held by the node for tasks and containing objects),
    mapped (processes' live zero-copy views), task (what made it), lineage
    (True when it can be rebuilt by re-running that task), spill_path. ``filters``: [(key, "=" or "!=", value)]."""
    rows = memory_report()["objects"]
    for key, op, value in filters or ():
        if op not in ("=", "!="):
            raise ValueError(f"filter operator must be '=' or '!=', got {op!r}")
        rows = [r for r in rows if (str(r.get(key)) == str(value)) == (op == "=")]
    return rows[:limit]


def memory_summary(stats_only: bool = False) -> str:
    report = memory_report()
    mb = 1e6
    lines = [
        f"object store: {report['store_used'] / mb:.1f} MB used of "
        f"{report['store_capacity'] / mb:.1f} MB; spilled now {report['spilled_bytes'] / mb:.1f}"
        f" MB (written {report['spilled_total'] / mb:.1f} MB, restored "
        f"{report['restored_total'] / mb:.1f} MB in all)",
        f"objects: {len(report['objects'])}",
    ]
    if not stats_only:
        lines.append(f"{'object id':34} {'size':>12} {'where':14} {'refs':>5} {'driver':>6} "
                     f"{'pins':>5} {'mapped':>6}  made by / worker refs")
        for r in sorted(report["objects"], key=lambda r: -r["size"]):
            workers = ", ".join(f"pid {pid}: {n}" for pid, n in r["worker_refs"].items())
            lines.append(f"{r['object_id']:34} {r['size']:>12} {r['where']:14} {r['refs']:>5} "
                         f"{r['driver_refs']:>6} {r['pins']:>5} {r['mapped']:>6}  "
                         f"{r['task'] or '?'}{'; ' + workers if workers else ''}")
    return "\n".join(lines)
