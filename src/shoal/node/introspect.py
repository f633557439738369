"""What a node can tell about itself: the rows behind the state API
(shoal.util.state), `shoal list` / `summary` / `timeline` and `shoal doctor`.

Rows are built only when someone asks. The hot paths keep a few
timestamps on each TaskRecord (submitted, ready, sent to a worker, and the
run's start and end as the worker measured them) and, once a task ends, one
flat ``ended_row`` tuple in ``node.history`` (bounded by task_history_size).

A query names a kind (tasks, actors, workers, objects, placement_groups).
The node answers with its own rows and, in a cluster, asks every linked
peer for theirs (``state`` is a peer operation) and merges them: a task
forwarded to a peer is listed once, as the node that ran it saw it; an
actor, as the node hosting it sees it. Nodes that have not answered within
state_timeout_s, whose link closed before they answered, or that the head
lists as alive but that have no link here yet, are named in the answer's
``missing``, never waited on.

Part of ``Node`` (a base class of it), under ``node.lock``.
"""
from __future__ import annotations

import heapq
import os
import time

from .. import config
from ..scheduler.resources import _UNIT
from ..scheduler.task import ACTOR_CALL, ACTOR_CREATE, TASK
from ..transport import messages as m
from .actors import ALIVE, DEAD, PENDING
from .logs import log_path, read_output
from .memory_monitor import read_memory
from .records import QUEUED, RUNNING, WAITING_DEPS, ended_row
from .workers import TOOL_CLIENT

TASK_TYPES = {TASK: "NORMAL_TASK", ACTOR_CREATE: "ACTOR_CREATION_TASK",
              ACTOR_CALL: "ACTOR_TASK"}
# asked of every node; the head knows the nodes and the submitted jobs
KINDS = ("tasks", "actors", "workers", "objects", "placement_groups", "drivers")
HEAD_KINDS = ("nodes", "submissions")
PENDING_STATES = ("PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT")


def _ms(t: float) -> int | None:
    return int(t * 1000) if t else None


class NodeIntrospection:
    # ------------------------------------------------------------- service
    def _svc_state(self, client, request_id, reply, kind: str, everywhere: bool = True,
                   newest: int | None = None) -> None:
        """``kind``'s rows from here and every peer. ``newest``: only that
        many of the ended tasks, the newest, are needed (rows are built
        under the node's lock: a dashboard polling a node with a full
        history should not build 20,000 of them every time)."""
        if kind in HEAD_KINDS:
            self._head_state(kind, reply)
            return
        if kind not in KINDS:
            raise ValueError(f"no state kind {kind!r}; one of {', '.join(KINDS + HEAD_KINDS)}")
        if newest is not None and (not isinstance(newest, int) or newest < 0):
            raise ValueError(f"newest must be a non-negative int, got {newest!r}")
        rows = self._rows_tasks(newest) if kind == "tasks" else getattr(self, "_rows_" + kind)()
        if getattr(client, "is_peer", False):
            everywhere = False            # a peer's question is about this node alone
        links = [link for link in self.peers.values() if link.state != "dead"] \
            if everywhere else []
        # alive in the head's list but not linked (yet): their rows are missing too
        unlinked = {nid for nid in (self.view or ())
                    if nid not in self.peers} if everywhere else set()
        if not links:
            reply(True, {"rows": rows, "missing": sorted(n.hex() for n in unlinked)})
            return
        waiting = {link.node_id for link in links}
        failed = set(unlinked)      # a link that closes before answering: missing, not empty
        parts = [rows]
        done = []

        def finish():
            if done:
                return
            done.append(True)
            reply(True, {"rows": _merge(kind, parts),
                         "missing": sorted(n.hex() for n in waiting | failed)})

        def answered(ok, value, node_id):
            if ok and not done:
                parts.append(value["rows"])
            elif not ok:
                failed.add(node_id)
            waiting.discard(node_id)
            if not waiting:
                finish()

        def expire():
            with self.lock:
                finish()
        for link in links:
            self._peer_call(link, "state", (kind, False, newest),
                            lambda ok, value, nid=link.node_id: answered(ok, value, nid))
        self.loop.call_later(config.get("state_timeout_s"), expire)

    def _head_state(self, kind: str, reply) -> None:
        """Nodes and submitted jobs: the head's tables in a cluster; this
        node alone (and no submissions) otherwise."""
        head = getattr(self, "head", None)
        if head is None:
            reply(True, {"rows": self._local_node_rows() if kind == "nodes" else [],
                         "missing": []})
            return

        def answered(ok, value):
            with self.lock:
                if not ok:
                    reply(False, value)
                elif kind == "nodes":
                    reply(True, {"rows": [_node_row(r) for r in value["nodes"]], "missing": []})
                else:
                    reply(True, {"rows": [_job_row(r) for r in value], "missing": []})
        head.call("status" if kind == "nodes" else "job_list", (), answered)

    def _local_node_rows(self) -> list[dict]:
        r = self.resources
        return [_node_row({
            "node_id": self.node_id.hex(), "state": "ALIVE", "host": "127.0.0.1",
            "pid": os.getpid(), "resources": r.as_floats(r.total),
            "available": r.as_floats(r.available), "pending_tasks": sum(
                1 for rec in self.tasks.values() if self._live_state(rec) in PENDING_STATES),
            "is_head_node": True, "driver": not self.runs_tasks, "death_reason": None,
            "stats": self.stats()})]

    def stats(self) -> dict:
        """What the node's heartbeat tells the head besides its free
        resources (and what its row in list_nodes shows): the store, the
        workers, task counts, user metrics. Cheap: counts, no walk over
        the tasks."""
        running = sum(len(w.inflight) for w in self.workers.values())
        queued = sum(len(q) for q in self.queues.values()) + len(self.pending_actors)
        spill = self.spill
        memory = read_memory()
        return {
            "memory_used": memory.used,          # the machine's (or its cgroup's), as the
            "memory_total": memory.total,        # memory monitor counts it
            "object_store_used": self.allocator.used_bytes,
            "object_store_capacity": self.allocator.capacity,
            "spilled_bytes": spill.bytes if spill is not None else 0,
            "workers": sum(1 for w in self.workers.values() if w.proc is not None),
            "tasks": {"waiting": max(0, len(self.tasks) - queued - running), "queued": queued,
                      "running": running, "ended": self.ended_count,
                      "failed": self.failed_count},
            "metrics": self.metrics.rows(),
            "metrics_refused": dict(self.metrics.refused),
        }

    def _rows_drivers(self) -> list[dict]:
        """The jobs of drivers on this node: one in this process, connected
        ones (alive, and those that have gone)."""
        import sys
        node_hex = self.node_id.hex()
        rows = []
        if self.driver_pid is not None:
            rows.append({"job_id": self.job_id.hex(), "type": "DRIVER", "status": "RUNNING",
                         "entrypoint": " ".join(sys.argv) or "python",
                         "driver_pid": self.driver_pid, "driver_node_id": node_hex,
                         "start_time_ms": _ms(self.started), "end_time_ms": None,
                         "message": None, "exit_code": None})
        gone = [(w, when) for w, _, when in self.dead_workers if w.proc is None]
        alive = [(w, None) for w in self.driver_clients if w.state != TOOL_CLIENT]
        for w, when in alive + gone:
            rows.append({"job_id": w.job_id.hex(), "type": "DRIVER",
                         "status": "RUNNING" if when is None else "FINISHED",
                         "entrypoint": w.entrypoint, "driver_pid": w.pid,
                         "driver_node_id": node_hex, "start_time_ms": _ms(w.started),
                         "end_time_ms": _ms(when) if when else None, "message": None,
                         "exit_code": None})
        return rows

    # ---------------------------------------------------------------- logs
    def _svc_logs(self, client, request_id, reply, node_hex: str, pid: int, err: bool,
                  offset: int, task_hex: str | None) -> None:
        """What worker ``pid`` of node ``node_hex`` printed, from ``offset``
        (node/logs.py); asked of that node over its link if it is another."""
        if not isinstance(pid, int) or not isinstance(offset, int) or offset < 0:
            raise ValueError("logs needs a worker pid and a non-negative offset")
        if node_hex != self.node_id.hex():
            link = self.peers.get(bytes.fromhex(node_hex)) if _is_hex(node_hex) else None
            if link is None or getattr(client, "is_peer", False):
                raise ValueError(f"node {node_hex[:12]} cannot be reached from node "
                                 f"{self.node_id.hex()[:12]} (is it alive?)")
            self._peer_call(link, "logs", (node_hex, pid, err, offset, task_hex), reply)
            return
        path = log_path(self.logs_dir, pid, err) if self.logs_dir else None
        if path is None or not os.path.exists(path):
            raise ValueError(f"node {node_hex[:12]} has no output of a worker with pid {pid}")
        text, offset = read_output(path, offset, task_hex)
        alive = any(w.pid == pid for w in self.workers.values())
        reply(True, {"text": text, "offset": offset, "alive": alive})

    # --------------------------------------------------------------- tasks
    def _rows_tasks(self, newest: int | None = None) -> list[dict]:
        node_hex = self.node_id.hex()
        wall = time.time() - time.monotonic()       # started_at is monotonic
        errors: dict = {}                          # decoded ERROR values, by identity
        history = self.history
        if newest is not None and newest < len(history):
            # the newest by submission (tasks end in another order), as list_tasks sorts
            history = heapq.nlargest(newest, history, key=lambda t: (t[5], t[0]))
        rows = [self._task_row(t, None, node_hex, wall, errors) for t in history]
        live: dict = {}
        for rec in self.tasks.values():
            live[rec.spec.task_id] = rec
        for w in self.workers.values():
            for tid, rec in w.inflight.items():   # includes actor creations being run
                live[tid] = rec
        waits: dict = {}                 # worker -> objects its get/wait calls wait for
        for (client, _), req in self.requests.items():
            if client is not None and not req.done:
                waits.setdefault(client, []).extend(
                    oid.hex() for oid in req.ids
                    if (e := self.objects.get(oid)) is None or e.value is None)
        for tid, rec in live.items():
            state = self._live_state(rec)
            if state is not None:
                rows.append(self._task_row(ended_row(rec), state, node_hex, wall, errors,
                                           rec, waits))
        return rows

    def _live_state(self, rec) -> str | None:
        """Ray's name for where a live task is; None when it is not one to
        list (an actor's creation that already ran is in the history)."""
        spec = rec.spec
        if spec.kind == ACTOR_CREATE and rec.worker is None:
            actor = self.actors.get(spec.task_id)
            if actor is None or actor.state in (ALIVE, DEAD):
                return None
            if actor.remote is not None:
                return "SUBMITTED_TO_NODE"
            return "PENDING_ARGS_AVAIL" if rec.deps_left else "PENDING_NODE_ASSIGNMENT"
        if rec.state == WAITING_DEPS:
            if spec.kind == ACTOR_CALL and not rec.deps_left:
                return "PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY"
            return "PENDING_ARGS_AVAIL"
        if rec.state == QUEUED:
            return "PENDING_NODE_ASSIGNMENT"
        if rec.state != RUNNING:
            return None
        w = rec.worker
        if w is None:
            return "PENDING_NODE_ASSIGNMENT"
        if getattr(w, "is_peer", False):
            return "SUBMITTED_TO_NODE"
        actor = w.actor
        if (actor is not None and actor.max_concurrency > 1) or \
                next(iter(w.inflight), None) == spec.task_id:
            return "RUNNING"
        if spec.kind == ACTOR_CALL:          # on the actor's worker, behind another call
            return "PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY"
        return "SUBMITTED_TO_WORKER"        # queued behind the task its worker runs

    def _task_row(self, t: tuple, state, node_hex: str, wall: float, errors: dict,
                  rec=None, waits=None) -> dict:
        (task_id, kind, name, actor_id, parent_id, submitted, ready, sent, start, end,
         failure, pid, where, forwarded, max_retries, retries_left, placement, job_id) = t
        error_type = error_message = traceback = None
        if failure is not None:
            error_type, error_message, traceback = _failure(failure, errors)
        if state is None:
            state = "FAILED" if failure is not None else "FINISHED"
        sent_at = sent + wall if sent else 0.0
        measured = bool(start)
        if not start and state == "RUNNING":
            start = sent_at      # until its worker reports the run, when it was handed over
        row = {
            "task_id": task_id.hex(),
            "attempt_number": max(0, max_retries - retries_left) if max_retries >= 0 else 0,
            "name": name,
            "func_or_class_name": name,
            "type": TASK_TYPES[kind],
            "state": state,
            "actor_id": (task_id if kind == ACTOR_CREATE else actor_id).hex()
            if kind != TASK else None,
            "parent_task_id": parent_id.hex() if parent_id else None,
            "job_id": job_id.hex() if job_id else None,
            "node_id": where.hex() if forwarded else node_hex,
            "worker_id": where.hex() if where is not None and not forwarded else None,
            "worker_pid": pid,
            # (a live task's: the ended ones' are not kept, see ended_row)
            "required_resources": {k: n / _UNIT for k, n in rec.request.items()}
            if rec is not None else None,
            "placement_group_id": placement[0].hex() if placement else None,
            "creation_time_ms": _ms(submitted),
            "start_time_ms": _ms(start),
            "end_time_ms": _ms(end) if state in ("FINISHED", "FAILED") else None,
            "error_type": error_type,
            "error_message": error_message,
            "error_traceback": traceback,
            "forwarded": forwarded,           # an owner's view of a task a peer ran
            # the run to the microsecond, for the timeline
            "run_us": (int(start * 1e6), int(end * 1e6) if measured else None)
            if start else None,
        }
        events = [{"state": "PENDING_ARGS_AVAIL", "created_ms": _ms(submitted)}]
        if ready:
            events.append({"state": "PENDING_NODE_ASSIGNMENT", "created_ms": _ms(ready)})
        if sent_at and forwarded:       # this node owns it; the peer ``where`` runs it
            events.append({"state": "SUBMITTED_TO_NODE", "created_ms": _ms(sent_at),
                           "node_id": row["node_id"]})
        elif sent_at:
            events.append({"state": "SUBMITTED_TO_WORKER", "created_ms": _ms(sent_at),
                           "node_id": node_hex, "worker_pid": pid})
        if start:
            events.append({"state": "RUNNING", "created_ms": _ms(start)})
        if row["end_time_ms"]:
            events.append({"state": state, "created_ms": _ms(end)})
        row["events"] = events
        if rec is not None:
            w = rec.worker
            blocked = bool(state == "RUNNING" and w is not None and not forwarded and w.blocked)
            row["blocked_in_get"] = blocked
            # what its worker's get/wait calls wait for (a threaded actor's
            # calls share one worker: they are not told apart)
            row["blocked_on"] = list(dict.fromkeys(waits.get(w, ()))) if blocked and waits \
                else []
            row["pending_args"] = [dep.hex() for _, dep in rec.spec.deps
                                   if (e := self.objects.get(dep)) is None or e.value is None] \
                if state == "PENDING_ARGS_AVAIL" else []
        return row

    # -------------------------------------------------------------- actors
    def _rows_actors(self) -> list[dict]:
        node_hex = self.node_id.hex()
        rows = []
        for actor in self.actors.values():
            if actor.borrowed:
                continue                  # only a handle here; its owner lists it
            rec = self.tasks.get(actor.actor_id)
            state = actor.state
            if state == PENDING and rec is not None and rec.deps_left:
                state = "DEPENDENCIES_UNREADY"
            w = actor.worker
            opts = actor.spec.options or {}
            sent = len(w.inflight) if w is not None else 0
            running = min(sent, actor.max_concurrency)
            rows.append({
                "actor_id": actor.actor_id.hex(),
                "class_name": actor.class_name,
                "state": state,
                "job_id": actor.spec.job_id.hex() if actor.spec.job_id else None,
                "name": actor.name or "",
                "ray_namespace": actor.namespace,
                "node_id": actor.remote.node_id.hex() if actor.remote is not None else node_hex,
                "pid": w.pid if w is not None else None,
                "worker_id": w.worker_id.hex() if w is not None else None,
                "num_restarts": actor.num_restarts,
                "max_restarts": opts.get("max_restarts", 0),
                "is_detached": actor.detached,
                "required_resources": dict(actor.spec.resources or {}),
                "placement_group_id": actor.placement[0].hex() if actor.placement else None,
                "death_cause": actor.death_reason if state == DEAD else None,
                # calls waiting their turn: queued here or behind others on its worker
                "pending_calls": sum(1 for r in actor.queue if r.state != "finished")
                + sent - running,
                "running_calls": running,
                "proxy": actor.remote is not None,     # the owner's view; its host lists it too
            })
        return rows

    # ------------------------------------------------------------- workers
    def _rows_workers(self) -> list[dict]:
        node_hex = self.node_id.hex()
        rows = []
        if getattr(self, "driver_pid", None) is not None:
            rows.append({"worker_id": None, "pid": self.driver_pid, "node_id": node_hex,
                         "worker_type": "DRIVER", "state": "driver", "is_alive": True,
                         "actor_id": None, "actor_class": None, "current_task": None,
                         "queued_tasks": 0, "blocked_in_get": False, "exit_detail": None,
                         "end_time_ms": None})
        for w in self.workers.values():
            if w.state != TOOL_CLIENT:
                rows.append(_worker_row(w, node_hex, True, None, None))
        for w, why, when in self.dead_workers:
            rows.append(_worker_row(w, node_hex, False, why, when))
        return rows

    # ------------------------------------------------------------- objects
    def _rows_objects(self) -> list[dict]:
        node_hex = self.node_id.hex()
        rows = self.memory_report()["objects"]
        for r in rows:
            r["node_id"] = node_hex
        return rows

    # ---------------------------------------------------- placement groups
    def _rows_placement_groups(self) -> list[dict]:
        node_hex = self.node_id.hex()
        rows = []
        for pg in self.placement_groups.values():
            row = pg.table(node_hex)
            row["owner_node_id"] = pg.owner.node_id.hex() if pg.owner is not None else node_hex
            row["is_owner"] = pg.owner is None     # peers hold records for their bundles only
            row["namespace"] = pg.namespace
            row["created_ms"] = _ms(pg.created_at)
            rows.append(row)
        return rows


def _is_hex(text) -> bool:
    try:
        return isinstance(text, str) and len(bytes.fromhex(text)) == 16
    except ValueError:
        return False


def _node_row(r: dict) -> dict:
    """A node as Ray's list_nodes() shows one, from the head's table row."""
    return {"node_id": r["node_id"], "node_ip": r.get("host"), "state": r["state"],
            "is_head_node": bool(r.get("is_head_node")), "is_driver_node": bool(r.get("driver")),
            "resources_total": r.get("resources") or {},
            "resources_available": r.get("available") or {},
            "pending_tasks": r.get("pending_tasks", 0), "pid": r.get("pid"),
            "state_message": r.get("death_reason"), "stats": r.get("stats") or {}}


def _job_row(r: dict) -> dict:
    """A submitted job (`shoal job submit`), in Ray's list_jobs() terms."""
    return {"job_id": r["job_id"], "type": "SUBMISSION", "status": r["state"],
            "entrypoint": r["entrypoint"], "driver_pid": None, "driver_node_id": None,
            "start_time_ms": _ms(r.get("submitted") or 0), "end_time_ms": _ms(r.get("ended") or 0),
            "message": r.get("message"), "exit_code": r.get("exit_code")}


def _worker_row(w, node_hex: str, alive: bool, why, when) -> dict:
    inflight = list(w.inflight.values())
    actor = w.actor
    return {
        "worker_id": w.worker_id.hex(), "pid": w.pid, "node_id": node_hex,
        "worker_type": "DRIVER" if w.proc is None else "WORKER",
        "state": w.state, "is_alive": alive,
        "actor_id": actor.actor_id.hex() if actor is not None else None,
        "actor_class": actor.class_name if actor is not None else None,
        "current_task": inflight[0].spec.name if inflight and alive else None,
        "queued_tasks": max(0, len(inflight) - 1) if alive else 0,
        "blocked_in_get": bool(w.blocked) if alive else False,
        "exit_detail": why, "end_time_ms": _ms(when) if when else None,
    }


def _failure(failure: tuple, errors: dict) -> tuple:
    """(type, message) of a task's failure: as its worker reported it, or
    decoded from the ERROR value the node ended it with (once per value:
    many tasks can share one)."""
    if type(failure[0]) is str:        # (type, message, traceback) from the worker
        return failure
    key = id(failure)
    if key not in errors:
        errors[key] = _decode_error(failure)
    return errors[key]


def _decode_error(value: tuple) -> tuple:
    from ..serialization import deserialize
    if value[0] != m.ERROR:
        return "UnknownError", "the task ended without a value", None
    try:
        err = deserialize(*value[1])
    except Exception as e:       # a user class this process cannot import
        return ("UnknownError", f"the error could not be read here ({type(e).__name__}: {e})",
                None)
    cause = getattr(err, "cause", None)
    shown = cause if cause is not None else err
    try:
        message = str(shown)
    except Exception:
        message = ""
    return type(shown).__name__, message[:2000], getattr(err, "traceback_str", None)


# ---------------------------------------------------------------- merging
def _merge(kind: str, parts: list) -> list:
    """One node's rows after another's: the same task or actor seen by two
    nodes (its owner and the node running it) is listed once."""
    if kind == "tasks":
        return _merge_by(parts, "task_id", lambda r: not r["forwarded"], _keep_first_creation)
    if kind == "actors":
        return _merge_by(parts, "actor_id", lambda r: not r["proxy"], None)
    if kind == "placement_groups":
        return _merge_by(parts, "placement_group_id", lambda r: r["is_owner"], None)
    return [row for rows in parts for row in rows]


def _merge_by(parts: list, key: str, authoritative, combine) -> list:
    best: dict = {}
    for rows in parts:
        for row in rows:
            k = row[key]
            old = best.get(k)
            if old is None:
                best[k] = row
            elif authoritative(row) and not authoritative(old):
                best[k] = combine(row, old) if combine else row
            elif combine and authoritative(old) and not authoritative(row):
                best[k] = combine(old, row)
    return list(best.values())


def _keep_first_creation(row: dict, owners: dict) -> dict:
    """The running node's row, with the owner's (earlier) submission time and
    its events up to handing the task to that node (SUBMITTED_TO_NODE)."""
    first = owners.get("creation_time_ms")
    if first and (row["creation_time_ms"] is None or first < row["creation_time_ms"]):
        row = dict(row, creation_time_ms=first)
    theirs = owners.get("events") or []
    if any(e["state"] == "SUBMITTED_TO_NODE" for e in theirs):
        upto = next(i for i, e in enumerate(theirs) if e["state"] == "SUBMITTED_TO_NODE")
        row = dict(row, events=theirs[:upto + 1] + row["events"][1:])
    elif first and row["events"]:
        row = dict(row, events=[dict(row["events"][0], created_ms=first)] + row["events"][1:])
    return row

