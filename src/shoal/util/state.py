"""Looking inside the running cluster, with Ray's ``ray.util.state`` names.

    from shoal.util.state import list_tasks, summarize_tasks
    list_tasks(filters=[("state", "=", "RUNNING")], limit=10)

``list_<kind>(filters=, limit=, detail=)`` for nodes, workers, tasks,
actors, objects, placement groups and jobs; ``get_<kind>(id)``; and
``summarize_tasks`` / ``summarize_actors`` / ``summarize_objects`` grouped
by function or class and state. Each row is a dict that also reads as
attributes (``row.state``). The rows come from every node of the cluster
(node/introspect.py); a node that does not answer in time is named in a
``StateError`` (or a warning with ``raise_on_missing_output=False``).

Task states, in Ray's words: PENDING_ARGS_AVAIL (waiting for its arguments),
PENDING_NODE_ASSIGNMENT (waiting for resources or a worker),
SUBMITTED_TO_NODE (sent to another node, which has not said more yet),
SUBMITTED_TO_WORKER (queued on a busy worker), RUNNING,
PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY (an actor call waiting its turn),
FINISHED, FAILED (with error_type and error_message). Each task carries its
``events``: the states it went through, with timestamps in ms.
"""
from __future__ import annotations

import warnings
from collections import Counter as _Counter

from ..exceptions import ShoalError

DEFAULT_LIMIT = 100
_ID_FIELDS = {"nodes": "node_id", "workers": "worker_id", "tasks": "task_id",
              "actors": "actor_id", "objects": "object_id",
              "placement_groups": "placement_group_id", "jobs": "job_id"}
_BRIEF_HIDDEN = {"tasks": ("events", "forwarded", "pending_args", "blocked_on", "run_us",
                           "error_traceback"),
                 "actors": ("proxy",),
                 "placement_groups": ("is_owner",)}
_OPS = ("=", "!=")


class StateError(ShoalError):
    """A state query that could not be answered in full (a node did not
    answer in time) or was malformed."""


class StateRow(dict):
    """A row of the state API: a dict whose keys also read as attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


# ---------------------------------------------------------------- queries
def _core(address: str | None):
    import shoal
    from ..core import get_core
    if not shoal.is_initialized():
        shoal.init(address=address or "auto", _as_tool=True)
    return get_core()


def _query(kind: str, address, timeout, raise_on_missing_output: bool,
           newest: int | None = None) -> list[dict]:
    answer = _core(address).request("state", kind, True, newest, timeout=timeout)
    if answer["missing"]:
        msg = (f"the {kind} of node(s) {', '.join(n[:12] for n in answer['missing'])} are "
               f"missing: those nodes did not answer in time (state_timeout_s)")
        if raise_on_missing_output:
            raise StateError(msg)
        warnings.warn(msg, stacklevel=3)
    return answer["rows"]


def _rows(kind: str, address, timeout, raise_on_missing_output: bool,
          newest: int | None = None) -> list[dict]:
    """Every row of ``kind`` (of tasks: all live ones and the ``newest``
    ended ones per node); jobs are the head's submissions and the drivers."""
    if kind == "jobs":
        return (_query("submissions", address, timeout, raise_on_missing_output)
                + _query("drivers", address, timeout, raise_on_missing_output))
    return _query(kind, address, timeout, raise_on_missing_output, newest)


def _check_limit(limit) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 0):
        raise ValueError(f"limit must be a non-negative int, got {limit!r}")


def _select(kind: str, rows: list, filters, limit, detail: bool) -> list[StateRow]:
    for f in filters or ():
        rows = _apply_filter(kind, rows, f)
    if kind == "tasks":                 # the newest ``limit``, oldest first
        # (ids of one submitter count up: they order tasks created in the same ms)
        rows = sorted(rows, key=lambda r: (r["creation_time_ms"] or 0, r["task_id"]))
        if limit is not None:
            rows = rows[len(rows) - limit:] if limit else []
    elif limit is not None:
        rows = rows[:limit]
    hidden = () if detail else _BRIEF_HIDDEN.get(kind, ())
    return [StateRow({k: v for k, v in r.items() if k not in hidden}) for r in rows]


def _apply_filter(kind: str, rows: list, f) -> list:
    if not (isinstance(f, (tuple, list)) and len(f) == 3):
        raise ValueError(f"a filter is (key, '=' or '!=', value), got {f!r}")
    key, op, value = f
    if op not in _OPS:
        raise ValueError(f"filter operator must be '=' or '!=', got {op!r}")
    if rows and key not in rows[0]:
        raise ValueError(f"{kind} have no field {key!r}; they have: {', '.join(rows[0])}")
    want = op == "="
    return [r for r in rows if _matches(r.get(key), value) == want]


def _matches(have, value) -> bool:
    """Compare as the CLI's strings would: 'true' matches True, '3' matches 3,
    case-insensitively for states and names given as text."""
    if isinstance(have, bool):
        return str(value).strip().lower() in (("true", "1", "yes") if have else
                                              ("false", "0", "no"))
    if isinstance(have, (int, float)) and not isinstance(value, bool):
        try:
            return float(have) == float(value)
        except (TypeError, ValueError):
            return False
    if have is None:
        return value is None or str(value).lower() in ("none", "null", "")
    return str(have).lower() == str(value).lower()


def _lister(kind: str):
    def list_kind(filters: list | None = None, limit: int | None = DEFAULT_LIMIT,
                  detail: bool = False, timeout: float | None = 30,
                  raise_on_missing_output: bool = True, address: str | None = None
                  ) -> list[StateRow]:
        _check_limit(limit)
        # unfiltered, each node needs to build only its newest ``limit`` ended tasks
        newest = limit if kind == "tasks" and not filters else None
        return _select(kind, _rows(kind, address, timeout, raise_on_missing_output, newest),
                       filters, limit, detail)
    list_kind.__name__ = f"list_{kind}"
    list_kind.__doc__ = (f"The cluster's {kind.replace('_', ' ')}: one row each. ``filters``: "
                         f"[(key, '=' or '!=', value)]; ``limit`` rows at most (None: all); "
                         f"``detail`` adds every field.")
    return list_kind


def _getter(kind: str):
    field = _ID_FIELDS[kind]

    def get_kind(id: str, timeout: float | None = 30, address: str | None = None):
        if not isinstance(id, str) or not id:
            raise ValueError(f"get_{kind[:-1]} takes the id as a hex string, got {id!r}")
        rows = [r for r in _rows(kind, address, timeout, False) if r[field] == id]
        if kind == "objects":
            return [StateRow(r) for r in rows]
        return StateRow(rows[0]) if rows else None
    get_kind.__name__ = f"get_{kind[:-1]}" if kind != "objects" else "get_objects"
    get_kind.__doc__ = f"The row of one of the cluster's {kind.replace('_', ' ')} by id, or None."
    return get_kind


list_nodes = _lister("nodes")
list_workers = _lister("workers")
list_tasks = _lister("tasks")
list_actors = _lister("actors")
list_objects = _lister("objects")
list_placement_groups = _lister("placement_groups")
list_jobs = _lister("jobs")
list_jobs.__doc__ = (
    "The cluster's jobs: those submitted with `shoal job submit` (type SUBMISSION, status "
    "PENDING/RUNNING/SUCCEEDED/FAILED/STOPPED) and every driver program connected now or "
    "before (type DRIVER, status RUNNING or FINISHED). ``filters``, ``limit`` and ``detail`` "
    "as for list_tasks.")
get_node = _getter("nodes")
get_worker = _getter("workers")
get_task = _getter("tasks")
get_actor = _getter("actors")
get_objects = _getter("objects")
get_placement_group = _getter("placement_groups")
get_job = _getter("jobs")


# -------------------------------------------------------------- summaries
def summarize_tasks(timeout: float | None = 30, address: str | None = None) -> dict:
    """Tasks grouped by function (or Class.method) and state: {"summary":
    {name: {"func_or_class_name", "type", "state_counts": {state: n}}},
    "total": n}."""
    return _summarize(_query("tasks", address, timeout, False), "func_or_class_name",
                      "state", ("type",))


def summarize_actors(timeout: float | None = 30, address: str | None = None) -> dict:
    """Actors grouped by class and state."""
    return _summarize(_query("actors", address, timeout, False), "class_name", "state", ())


def summarize_objects(timeout: float | None = 30, address: str | None = None) -> dict:
    """Objects grouped by where they live and what made them: counts and bytes."""
    rows = _query("objects", address, timeout, False)
    summary: dict = {}
    for r in rows:
        key = r["task"] or "?"
        group = summary.setdefault(key, {"task": key, "total_objects": 0, "total_size_bytes": 0,
                                         "where_counts": {}})
        group["total_objects"] += 1
        group["total_size_bytes"] += r["size"]
        group["where_counts"][r["where"]] = group["where_counts"].get(r["where"], 0) + 1
    return {"summary": summary, "total_objects": len(rows),
            "total_size_bytes": sum(r["size"] for r in rows)}


def _summarize(rows: list, group_by: str, count_by: str, keep: tuple) -> dict:
    summary: dict = {}
    for r in rows:
        key = r[group_by]
        group = summary.get(key)
        if group is None:
            group = summary[key] = {group_by: key, **{k: r[k] for k in keep},
                                    f"{count_by}_counts": _Counter()}
        group[f"{count_by}_counts"][r[count_by]] += 1
    for group in summary.values():
        group[f"{count_by}_counts"] = dict(group[f"{count_by}_counts"])
    return {"summary": summary, "total": len(rows)}


# -------------------------------------------------------------------- logs
def get_log(pid: int | None = None, node_id: str | None = None, actor_id: str | None = None,
            task_id: str | None = None, err: bool = False, follow: bool = False,
            tail: int | None = None, timeout: float | None = 30, address: str | None = None,
            poll_interval_s: float = 0.25):
    """What a worker printed (its stdout, or stderr with ``err``), as it
    comes: a generator of text chunks. Name the worker by ``pid`` (and
    ``node_id`` where pids could repeat across machines), or give an
    ``actor_id`` (its worker's output) or a ``task_id`` (only what that task
    printed). ``tail``: the last that many lines first; ``follow``: keep
    yielding new output until the worker exits."""
    import time
    given = [x is not None for x in (pid, actor_id, task_id)]
    if sum(given) != 1:
        raise ValueError("get_log needs exactly one of pid=, actor_id= or task_id=")
    if tail is not None and (not isinstance(tail, int) or tail < 0):
        raise ValueError(f"tail must be a non-negative number of lines, got {tail!r}")
    node_id, pid, task_hex = _log_source(pid, node_id, actor_id, task_id, timeout, address)
    core = _core(address)
    offset, pending = 0, ""
    while True:
        answer = core.request("logs", node_id, pid, err, offset, task_hex, timeout=timeout)
        offset = answer["offset"]
        text = answer["text"]
        if tail is not None:                 # first pass: keep only the last lines
            pending += text
            if text:
                continue
            text = "".join(pending.splitlines(keepends=True)[-tail:]) if tail else ""
            tail = None
        if text:
            yield text
            continue
        if not follow or not answer["alive"]:
            return
        time.sleep(poll_interval_s)        # polling a file for new lines


def _log_source(pid, node_id, actor_id, task_id, timeout, address) -> tuple:
    """(node id, worker pid, task id or None) of the output asked for."""
    if task_id is not None:
        row = get_task(task_id, timeout=timeout, address=address)
        if row is None:
            raise ValueError(f"no task {task_id!r} (list_tasks shows them)")
        if row["worker_pid"] is None:
            raise ValueError(f"task {task_id} has not run on a worker yet ({row['state']})")
        return row["node_id"], row["worker_pid"], row["task_id"]
    if actor_id is not None:
        row = get_actor(actor_id, timeout=timeout, address=address)
        if row is None:
            raise ValueError(f"no actor {actor_id!r} (list_actors shows them)")
        if row["pid"] is not None:
            return row["node_id"], row["pid"], None
        runs = [t for t in _query("tasks", address, timeout, False)
                if t["actor_id"] == actor_id and t["type"] == "ACTOR_CREATION_TASK"
                and t["worker_pid"] is not None]
        if not runs:
            raise ValueError(f"actor {actor_id} never ran on a worker ({row['state']})")
        last = max(runs, key=lambda t: t["creation_time_ms"] or 0)
        return last["node_id"], last["worker_pid"], None
    if not isinstance(pid, int):
        raise ValueError(f"pid must be an int, got {pid!r}")
    if node_id is None:
        nodes = {w["node_id"] for w in _query("workers", address, timeout, False)
                 if w["pid"] == pid}
        if not nodes:
            raise ValueError(f"no worker with pid {pid} (list_workers shows them)")
        if len(nodes) > 1:
            raise ValueError(f"workers with pid {pid} ran on several nodes "
                             f"({', '.join(sorted(n[:12] for n in nodes))}): pass node_id=")
        node_id = nodes.pop()
    return node_id, pid, None


# ------------------------------------------------------------------ memory
def memory_report() -> dict:
    """This node's objects and store totals, with spill counters (see
    node/memory.py)."""
    return _core(None).request("memory")


def memory_summary(stats_only: bool = False, timeout: float | None = 30,
                   address: str | None = None) -> str:
    """``shoal memory``: each node's store, then every object of the
    cluster by size, with where it is, its node and its owner (the process
    whose task or put made it), references, and the task that made it."""
    mb = 1e6
    nodes = [n for n in list_nodes(limit=None, timeout=timeout, address=address)
             if n["state"] == "ALIVE"]
    lines = []
    for n in sorted(nodes, key=lambda n: n["node_id"]):
        st = n.get("stats") or {}
        if "object_store_capacity" not in st:
            continue                      # a driver's node without a store of its own
        lines.append(f"node {n['node_id']}: object store {st['object_store_used'] / mb:.1f} MB "
                     f"used of {st['object_store_capacity'] / mb:.1f} MB; spilled now "
                     f"{st.get('spilled_bytes', 0) / mb:.1f} MB")
    if stats_only:
        return "\n".join(lines)
    rows = list_objects(limit=None, timeout=timeout, raise_on_missing_output=False,
                        address=address)
    total = sum(r["size"] for r in rows)
    lines.append(f"objects: {len(rows)}, {total / mb:.1f} MB")
    lines.append(f"{'object id':34} {'size':>12} {'where':14} {'node':12} {'refs':>5} "
                 f"{'pins':>5} {'mapped':>6}  owner; made by; refs by worker")
    for r in sorted(rows, key=lambda r: (-r["size"], r["object_id"])):
        workers = ", ".join(f"pid {pid}: {n}" for pid, n in r["worker_refs"].items())
        lines.append(f"{r['object_id']:34} {r['size']:>12} {r['where']:14} "
                     f"{r['node_id'][:12]:12} {r['refs']:>5} {r['pins']:>5} {r['mapped']:>6}  "
                     f"{r['owner'] or '?'}; {r['task'] or '?'}{'; ' + workers if workers else ''}")
    return "\n".join(lines)


__all__ = ["list_nodes", "list_workers", "list_tasks", "list_actors", "list_objects",
           "list_placement_groups", "list_jobs", "get_node", "get_worker", "get_task",
           "get_actor", "get_objects", "get_placement_group", "get_job", "summarize_tasks",
           "summarize_actors", "summarize_objects", "get_log", "StateError", "StateRow"]
