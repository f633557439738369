"""``shoal doctor``: why is it stuck? Pending work explained in plain words.

Built on the state API alone (shoal.util.state), so it sees what
``list_tasks`` and friends see, on every node. Each finding names its kind,
the task, actor or group it is about, and a sentence that says what waits
for what, with the numbers:

- ``infeasible``: a task or actor asks for more than any node has (its
  request against the largest node's totals);
- ``waiting_on_pending``: a task waits for an argument (any of them) whose
  producer is itself pending, followed down the chain to what the last one
  waits for;
- ``resource_deadlock``: a task or actor needs resources that are held by
  actors whose running calls are blocked in ``get``, waiting, directly or
  through a chain of pending producers, for that very work (more nested
  ``get``s than CPUs; an actor its callers' actors leave no room for);
- ``placement_group``: a placement group that is still PENDING, with the
  reason it cannot be placed;
- ``straggler``: a task running far longer than its function usually
  takes (``straggler_factor`` times the median of its finished runs, and at
  least ``straggler_min_s``).

``diagnose()`` returns the findings as dicts; ``report()`` the text that
``shoal doctor`` prints.
"""
from __future__ import annotations

import statistics
import time

from . import state

PENDING = ("PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT")


def diagnose(straggler_factor: float = 5.0, straggler_min_s: float = 10.0,
             min_samples: int = 3, address: str | None = None) -> list[dict]:
    """Every finding about the cluster's pending and running work now."""
    tasks = state.list_tasks(limit=None, detail=True, raise_on_missing_output=False,
                             address=address)
    actors = state.list_actors(limit=None, raise_on_missing_output=False, address=address)
    nodes = [n for n in state.list_nodes(limit=None, address=address)
             if n["state"] == "ALIVE" and not n["is_driver_node"]]
    groups = state.list_placement_groups(limit=None, raise_on_missing_output=False,
                                         address=address)
    by_id = {t["task_id"]: t for t in tasks}
    findings: list[dict] = []
    findings += _infeasible(tasks, nodes)
    findings += _waiting_on_pending(tasks, by_id, nodes)
    findings += _deadlocks(tasks, actors, nodes, by_id)
    findings += _pending_groups(groups, nodes)
    findings += _stragglers(tasks, straggler_factor, straggler_min_s, min_samples)
    return findings


def report(**kwargs) -> str:
    """``diagnose()`` as the text ``shoal doctor`` prints."""
    findings = diagnose(**kwargs)
    if not findings:
        return "Nothing looks stuck: no pending work that cannot proceed, no stragglers."
    lines = [f"{len(findings)} finding(s):"]
    for f in findings:
        lines.append(f"- [{f['kind']}] {f['message']}")
    return "\n".join(lines)


# ----------------------------------------------------------------- checks
def _fits(request: dict, capacity: dict) -> bool:
    return all(capacity.get(k, 0) + 1e-9 >= v for k, v in request.items() if v > 0)


def _resources(request: dict) -> str:
    return ", ".join(f"{k}: {v:g}" for k, v in sorted(request.items()) if v > 0) or "nothing"


def _label(t: dict) -> str:
    """What a task row is, for a reader: ids in full (a submitter's tasks
    share their first 16 hex digits)."""
    if t["type"] == "ACTOR_CREATION_TASK":
        return f"actor {t['name']} ({t['actor_id']})"
    if t["type"] == "ACTOR_TASK":
        return f"actor call {t['name']} ({t['task_id']})"
    return f"task {t['name']} ({t['task_id']})"


def _producer(object_hex: str, by_id: dict) -> dict | None:
    return by_id.get(object_hex[:24])       # an object's id is its task's id and an index


def _infeasible(tasks: list, nodes: list) -> list[dict]:
    out = []
    for t in tasks:
        if t["state"] != "PENDING_NODE_ASSIGNMENT" or not t.get("required_resources"):
            continue
        request = t["required_resources"]
        if any(_fits(request, n["resources_total"]) for n in nodes):
            continue
        out.append({"kind": "infeasible", "task_id": t["task_id"], "name": t["name"],
                    "message": f"{_label(t)} can never be scheduled: it asks for "
                               f"{_resources(request)}, and no node has that much "
                               f"({_largest(nodes, request)}). Lower the request or add a "
                               f"node that has it."})
    return out


def _largest(nodes: list, request: dict) -> str:
    if not nodes:
        return "no node is alive"
    parts = []
    for k in sorted(request):
        best = max(nodes, key=lambda n: n["resources_total"].get(k, 0))
        parts.append(f"the most {k} on one node is {best['resources_total'].get(k, 0):g}")
    return "; ".join(parts)


def _waiting_on_pending(tasks: list, by_id: dict, nodes: list) -> list[dict]:
    out = []
    for t in tasks:
        if t["state"] != "PENDING_ARGS_AVAIL" or not t.get("pending_args"):
            continue
        chain = _pending_chain(t, by_id)
        if not chain:
            continue                  # its producers run: it is only waiting its turn
        steps = " which waits for ".join(_label(p) for p in chain)
        out.append({"kind": "waiting_on_pending", "task_id": t["task_id"], "name": t["name"],
                    "chain": [p["task_id"] for p in chain],
                    "message": f"{_label(t)} waits for the result of {steps}, "
                               f"which is {_why_pending(chain[-1], nodes)}."})
    return out


def _pending_chain(t: dict, by_id: dict) -> list[dict]:
    """The producers ``t`` waits for, from a pending one of its arguments'
    producers down to the first that waits for no pending producer; [] when
    every producer it waits for is running (or unknown)."""
    chain, seen, last = [], {t["task_id"]}, t
    while True:
        nxt = None
        for arg in last.get("pending_args") or ():
            p = _producer(arg, by_id)
            if p is not None and p["task_id"] not in seen and p["state"] in PENDING:
                nxt = p
                break
        if nxt is None:
            return chain
        seen.add(nxt["task_id"])
        chain.append(nxt)
        last = nxt


def _why_pending(t: dict, nodes: list) -> str:
    if t["state"] == "PENDING_NODE_ASSIGNMENT":
        request = t.get("required_resources") or {}
        if request and not any(_fits(request, n["resources_total"]) for n in nodes):
            return f"infeasible (it asks for {_resources(request)}, more than any node has)"
        free = [n for n in nodes if _fits(request, n["resources_available"])]
        if request and not free:
            return f"waiting for {_resources(request)} to be free"
        return "waiting for a worker"
    return f"{t['state']}"


def _deadlocks(tasks: list, actors: list, nodes: list, by_id: dict) -> list[dict]:
    """Pending work whose resources are all in use by actors blocked in get
    on that very work (a node's resources and their users are read at
    slightly different moments: a use no known holder explains counts as one
    that will end). Tasks blocked in get lend their CPU, so only actors hold
    resources while they wait."""
    blocked_on: dict = {}       # actor id -> objects its blocked calls wait for
    for t in tasks:
        if t["type"] == "ACTOR_TASK" and t["state"] == "RUNNING" and t.get("blocked_in_get"):
            blocked_on.setdefault(t["actor_id"], set()).update(t.get("blocked_on") or ())
    holders = {}       # node id -> [(what, resources, objects waited for or None)]
    for a in actors:
        if a["state"] == "ALIVE" and not a.get("proxy") and a["required_resources"]:
            holders.setdefault(a["node_id"], []).append(
                (f"actor {a['class_name']} ({a['actor_id']}, pid {a['pid']})",
                 a["required_resources"], blocked_on.get(a["actor_id"])))
    out = []
    for t in tasks:
        if t["state"] != "PENDING_NODE_ASSIGNMENT" or not t.get("required_resources"):
            continue
        request = t["required_resources"]
        fitting = [n for n in nodes if _fits(request, n["resources_total"])]
        if not fitting or any(_fits(request, n["resources_available"]) for n in fitting):
            continue
        stuck = []
        for n in fitting:
            blocked = [h for h in holders.get(n["node_id"], []) if h[2] is not None]
            if not blocked or not _all_used_by(n, request, blocked):
                break
            stuck += blocked
        else:
            # a deadlock only if some of them wait (directly or not) for this work
            if not any(_waits_for(oid, t, by_id) for _, _, objs in stuck for oid in objs):
                continue
            names = "; ".join(f"{what} holds {_resources(res)}" for what, res, _ in stuck)
            out.append({"kind": "resource_deadlock", "task_id": t["task_id"],
                        "name": t["name"], "holders": [what for what, _, _ in stuck],
                        "message": f"{_label(t)} needs {_resources(request)}, but what "
                                   f"it needs is held by callers blocked in get: {names}. "
                                   f"They wait for its result, which cannot come until "
                                   f"they release it: give the actors num_cpus=0 (or fewer "
                                   f"CPUs), or avoid get() inside them."})
    return out


def _waits_for(object_hex: str, target: dict, by_id: dict, seen=None) -> bool:
    """Whether the object comes from ``target``, or from pending work that
    waits for it: a chain of pending producers, or a call to the actor that
    ``target`` creates."""
    seen = set() if seen is None else seen
    p = _producer(object_hex, by_id)
    if p is None or p["task_id"] in seen:
        return False
    seen.add(p["task_id"])
    if p["task_id"] == target["task_id"]:
        return True
    if target["type"] == "ACTOR_CREATION_TASK" and p["type"] == "ACTOR_TASK" \
            and p["actor_id"] == target["actor_id"] and p["state"] not in ("RUNNING",
                                                                          "FINISHED", "FAILED"):
        return True
    if p["state"] not in ("PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT",
                          "PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY"):
        return False
    return any(_waits_for(arg, target, by_id, seen) for arg in p.get("pending_args") or ())


def _all_used_by(node: dict, request: dict, blocked: list) -> bool:
    """Whether the blocked holders account for all the node's use of what
    ``request`` needs (anything else holding some of it will let go)."""
    for k, v in request.items():
        if v <= 0:
            continue
        used = node["resources_total"].get(k, 0) - node["resources_available"].get(k, 0)
        if sum(res.get(k, 0) for _, res, _ in blocked) + 1e-9 < used:
            return False
    return True


def _pending_groups(groups: list, nodes: list) -> list[dict]:
    out = []
    for g in groups:
        if g["state"] != "PENDING":
            continue
        reason = (g.get("stats") or {}).get("infeasible_reason")
        need = {}
        for b in g["bundles"].values():
            for k, v in b.items():
                need[k] = need.get(k, 0) + v
        if not reason:
            reason = (f"its {len(g['bundles'])} bundle(s) need {_resources(need)} in all "
                      f"with strategy {g['strategy']}, and the nodes' free resources "
                      f"do not hold them now")
        out.append({"kind": "placement_group", "placement_group_id": g["placement_group_id"],
                    "name": g["name"],
                    "message": f"placement group {g['name'] or g['placement_group_id']} "
                               f"is not placed: {reason}."})
    return out


def _stragglers(tasks: list, factor: float, min_s: float, min_samples: int) -> list[dict]:
    durations: dict = {}
    for t in tasks:
        if t["state"] == "FINISHED" and t.get("run_us") and t["run_us"][1] is not None:
            durations.setdefault(t["name"], []).append((t["run_us"][1] - t["run_us"][0]) / 1e6)
    now = time.time()
    out = []
    for t in tasks:
        if t["state"] != "RUNNING" or not t.get("start_time_ms"):
            continue
        past = durations.get(t["name"], [])
        if len(past) < min_samples:
            continue
        usual = statistics.median(past)
        running = now - t["start_time_ms"] / 1000
        if running >= min_s and running >= factor * usual:
            out.append({"kind": "straggler", "task_id": t["task_id"], "name": t["name"],
                        "running_s": running, "usual_s": usual,
                        "message": f"{_label(t)} on worker pid {t['worker_pid']} has run "
                                   f"{running:.1f} s; {t['name']} usually takes "
                                   f"{usual:.2f} s (median of {len(past)} runs)."})
    return out
