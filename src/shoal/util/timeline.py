"""``shoal.timeline()``: every task's run as a Chrome trace (Perfetto and
chrome://tracing open it), one process per node and one track per worker.

Built from the state API's task rows (their run's start and end as the
worker measured them), so it covers what the nodes still remember
(task_history_size ended tasks each, plus those running now).
"""
from __future__ import annotations

import json
import time

from .state import list_tasks

_COLORS = {"NORMAL_TASK": "thread_state_running", "ACTOR_TASK": "rail_response",
           "ACTOR_CREATION_TASK": "rail_load"}


def trace_events(tasks: list[dict]) -> list[dict]:
    """The Chrome trace events ("X" complete events plus process and thread
    names) for task rows of ``list_tasks(detail=True)``."""
    events: list[dict] = []
    now_us = int(time.time() * 1e6)
    nodes: dict = {}
    threads: set = set()
    for t in tasks:
        if not t.get("run_us") or t.get("worker_pid") is None:
            continue            # never ran, or only its owner's view of it
        node = t["node_id"]
        pid = nodes.setdefault(node, len(nodes) + 1)
        tid = t["worker_pid"]
        if (pid, tid) not in threads:
            threads.add((pid, tid))
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                           "args": {"name": f"worker pid={tid}"}})
        start, end = t["run_us"]
        if end is None:            # running now: up to the moment of the query
            end = max(start, now_us)
        events.append({
            "ph": "X", "cat": t["type"], "name": t["name"], "pid": pid, "tid": tid,
            "ts": start, "dur": end - start,
            "cname": "terrible" if t["state"] == "FAILED" else _COLORS.get(t["type"], "generic_work"),
            "args": {"task_id": t["task_id"], "state": t["state"], "attempt": t["attempt_number"],
                     **({"error": f"{t['error_type']}: {t['error_message']}"}
                        if t.get("error_type") else {})},
        })
    for node, pid in nodes.items():
        events.append({"ph": "M", "name": "process_name", "pid": pid,
                       "args": {"name": f"node {node[:12]}"}})
    return events


def timeline(filename: str | None = None) -> list[dict] | None:
    """The cluster's task timeline as Chrome trace events; with ``filename``,
    written there as JSON (open it in https://ui.perfetto.dev) instead."""
    events = trace_events(list_tasks(limit=None, detail=True, raise_on_missing_output=False))
    if filename is None:
        return events
    with open(filename, "w") as f:
        json.dump(events, f)
    return None
