"""The node's record of an actor and its lifecycle.

    PENDING --created--> ALIVE --worker died, restarts left--> RESTARTING --> ALIVE
       |                   |
       +----- failed ------+---- killed / exited / out of scope / no restarts ---> DEAD

Calls wait in ``queue`` (per actor, in arrival order, which is each caller's
submission order) and are sent to the actor's worker once it is ALIVE and
the call's arguments are ready. The actor's handle object (the creation
task's return) is what handles reference: when no handle remains, the actor
is stopped, unless it is detached.
"""
from __future__ import annotations

import time
from collections import deque

from .. import config
from ..exceptions import ActorDiedError
from ..scheduler.task import ACTOR_CALL, TaskSpec, object_id_for
from ..transport import messages as m
from .placement import GONE
from .records import (FINISHED, HERE, NODE_GONE, RUNNING, WAIT, WAITING_DEPS, TaskRecord,
                      ended_row)
from .workers import ACTOR as W_ACTOR

PENDING, ALIVE, RESTARTING, DEAD = "PENDING_CREATION", "ALIVE", "RESTARTING", "DEAD"


class ActorRecord:
    def __init__(self, spec: TaskSpec, request: dict):
        opts = spec.options or {}
        self.actor_id = spec.task_id
        self.spec = spec
        self.request = request
        self.handle_id = object_id_for(spec.task_id, 1)
        self.state = PENDING
        self.worker = None
        self.remote = None         # the PeerLink to the node hosting it, if not this one
        self.assignment = None
        self.placement = None      # (pg_id, bundle_index, capture) when in a placement group
        self.queue: deque = deque()
        self.restarts_left = opts.get("max_restarts", 0)
        self.num_restarts = 0
        self.name = opts.get("name")
        self.namespace = opts.get("namespace")
        self.detached = opts.get("lifetime") == "detached"
        # calls it runs at once (async actors: Ray's default of 1000)
        self.max_concurrency = opts.get("max_concurrency") or (
            1000 if opts.get("is_async") else 1)
        self.class_name = spec.name
        self.no_restart = False
        self.exit_reason = None
        self.death_reason = None
        self.death_cause = None
        self.started_at = 0.0       # time.monotonic() when (re)started on its worker

    @classmethod
    def proxy(cls, actor_id: bytes, link) -> "ActorRecord":
        """An actor another node hosts, known here only through a handle
        that came over ``link``: calls go over that link (node/peers.py)."""
        spec = TaskSpec(actor_id, 1, None, "actor", None, None, (), 1, {}, 0, False, (),
                        None, None, None, {})
        actor = cls(spec, {})
        actor.remote = link
        actor.state = ALIVE
        actor.borrowed = True
        return actor

    borrowed = False

    def death_message(self) -> str:
        reason = self.death_reason or "The actor is dead."
        return f"Actor {self.class_name} ({self.actor_id.hex()}) is dead: {reason}"


class NameClaim:
    """A name registered for an actor whose creation is not submitted yet.

    Its creator (``client``, a process on this node) registered the name and
    will submit the creation once told to go ahead (at once on one node;
    after the head's directory agrees, in a cluster). What arrives for the
    actor meanwhile waits here, so that racing ``get_if_exists`` creations
    share one actor: other registrations of the name (until the head
    answers), calls through handles already given out, and peers asking
    for its handle. The claim ends when the creation is submitted, or
    when its creator dies first (then everything waiting fails)."""
    __slots__ = ("client", "name", "namespace", "meta", "confirmed", "registrations",
                 "calls", "handle_requests")

    def __init__(self, client, name: str, namespace: str, meta):
        self.client = client
        self.name, self.namespace, self.meta = name, namespace, meta
        self.confirmed = False          # the name is ours (the head agreed, or no head)
        self.registrations: list = []   # (client, reply) of get_if_exists, until confirmed
        self.calls: list = []           # TaskRecords of calls to the actor
        self.handle_requests: list = []  # (link, reply): peers borrowing its handle


class NodeActors:
    """The node's actor lifecycle: placing, creating, calling, restarting
    and ending actors. Part of ``Node`` (a base class of it); runs under
    ``node.lock`` and uses the node's tables."""

    def _svc_kill_actor(self, client, request_id, reply, actor_id, no_restart) -> None:
        actor = self.actors.get(actor_id)
        if actor is None:
            raise ValueError("no such actor")
        if no_restart:
            actor.no_restart = True
            actor.exit_reason = "The actor was killed by shoal.kill()."
        if actor.worker is not None:
            actor.worker.proc.kill()
        elif actor.remote is not None:
            self._peer_call(actor.remote, "kill_actor", (actor_id, no_restart), _ignore)
            if no_restart:
                self._actor_dead(actor, actor.exit_reason)
        elif actor.state != DEAD and no_restart:
            self._actor_dead(actor, actor.exit_reason)
        reply(True, None)

    def _svc_register_name(self, client, request_id, reply, name, namespace, actor_id,
                           get_if_exists, meta=None) -> None:
        key = (namespace, name)
        existing = self.named.get(key)
        if existing is not None:
            claim = self.claims.get(existing)
            actor = self.actors.get(existing)
            if claim is not None and get_if_exists:
                # a creation that registered the name but is not submitted
                # yet: racing get_if_exists calls get that one actor
                if claim.confirmed:
                    reply(True, (existing, claim.meta, None))
                else:
                    claim.registrations.append((client, reply))
                return
            if claim is not None or (actor is not None and actor.state != DEAD):
                if get_if_exists:
                    reply(True, (existing, actor.spec.options.get("handle_meta"), None))
                    return
                raise _name_taken(name, namespace)
        self.named[key] = actor_id
        claim = self.claims[actor_id] = NameClaim(client, name, namespace, meta)
        if getattr(self, "head", None) is not None:     # a cluster: the head's directory decides
            self._register_name_in_cluster(client, reply, claim, actor_id, get_if_exists)
            return
        claim.confirmed = True
        reply(True, None)

    def _abandon_claims(self, client) -> None:
        """``client`` died after registering names and before submitting
        their actors: free the names and fail what waited for the actors."""
        for actor_id in [a for a, c in self.claims.items() if c.client is client]:
            claim = self.claims.pop(actor_id)
            key = (claim.namespace, claim.name)
            if self.named.get(key) == actor_id:
                del self.named[key]
                if claim.confirmed and getattr(self, "head", None) is not None:
                    self.head.call("actor_unregister", (claim.namespace, claim.name,
                                                        actor_id.hex()), _ignore)
            why = (f"The process creating the actor named {claim.name!r} (pid "
                   f"{client.pid}) died before it submitted the creation.")
            for rec in claim.calls:
                self._finish(rec, self._error_value(ActorDiedError(why, actor_id.hex())))
            for _, reply in claim.registrations + claim.handle_requests:
                reply(False, ActorDiedError(why, actor_id.hex()))

    def _svc_get_actor(self, client, request_id, reply, name, namespace) -> None:
        actor_id = self.named.get((namespace, name))
        actor = self.actors.get(actor_id) if actor_id else None
        if actor is None or actor.state == DEAD:
            if getattr(self, "head", None) is not None:
                self._get_actor_in_cluster(client, reply, name, namespace)
                return
            raise _no_such_actor(name, namespace)
        reply(True, (actor_id, actor.spec.options.get("handle_meta"), None))

    def _schedule_actors(self) -> None:
        for _ in range(len(self.pending_actors)):
            actor = self.pending_actors.popleft()
            if actor.state == DEAD:
                continue
            if actor.assignment is None:
                rec = self.tasks.get(actor.actor_id) if self.view is not None else None
                if rec is not None and actor.placement is not None:
                    link = self._pg_forward_target(rec) if self.peers else None
                    if link is not None:
                        self._forward_actor(link, actor, rec)
                        continue
                elif rec is not None and rec.route != HERE:
                    link = self._forward_first(rec)
                    if link is WAIT:
                        self.pending_actors.append(actor)
                        continue
                    if link is NODE_GONE:
                        actor.no_restart = True
                        self._actor_dead(actor, f"Its hard NodeAffinitySchedulingStrategy names "
                                                f"node {rec.route.hex()}, which died.")
                        continue
                    if link is not None:
                        self._forward_actor(link, actor, rec)
                        continue
                a = self._acquire(actor.placement, actor.request) if self.runs_tasks else None
                if a is GONE:
                    actor.no_restart = True
                    self._actor_dead(actor, "Its placement group was removed.")
                    continue
                actor.assignment = a
                if actor.assignment is None:
                    link = self._forward_overflow(rec) if rec is not None \
                        and actor.placement is None and rec.route != HERE else None
                    if link is not None:
                        self._forward_actor(link, actor, rec)
                        continue
                    self.pending_actors.append(actor)
                    continue
            w = self.idle.pop() if self.idle else None
            if w is None:
                self.pending_actors.append(actor)
                self._want_workers(len(self.pending_actors))
                continue
            self._start_actor_on(actor, w)
        if self.idle == [] and self.starting == 0 and not self.stopped:
            # keep a warm worker for the next task or actor
            self._want_workers(1)

    def _start_actor_on(self, actor: ActorRecord, w) -> None:
        for _, dep in actor.spec.deps:
            value = self.objects.entries[dep].value
            if value[0] == m.ERROR:
                self._actor_dead(actor, "An argument of its constructor failed; see the "
                                 "cause below.", cause=value)
                self._make_idle(w)
                return
        actor.spec.options["restarted"] = actor.num_restarts > 0
        actor.started_at = time.monotonic()
        w.state = W_ACTOR
        w.actor = actor
        actor.worker = w
        first = self.tasks.get(actor.actor_id)
        rec = TaskRecord(actor.spec, actor.request, first.key if first is not None else ())
        rec.state = RUNNING
        if first is not None:     # this run's lifecycle starts where the creation's did
            rec.submitted_at, rec.ready_at = first.submitted_at, first.ready_at
        self._execute(w, rec)

    def _actor_created(self, actor: ActorRecord, rec: TaskRecord, results, freed) -> None:
        oid, value = results[0]
        self.history.append(ended_row(rec))      # this run of its creation (each restart too)
        self.ended_count += 1
        if rec.failure is not None:
            self.failed_count += 1
        if value[0] == m.ERROR:
            actor.no_restart = True
            self._store(oid, value, freed)
            self._actor_dead(actor, "The actor's constructor raised an error; see the "
                             "cause above.", cause=value)
            if actor.worker is not None:
                self._send(actor.worker, (m.EXIT,))
            return
        if actor.num_restarts == 0:
            self._store(oid, value, freed)
        actor.state = ALIVE
        self._pump_actor(actor)

    def _pump_actor(self, actor: ActorRecord) -> None:
        if actor.state != ALIVE:
            return
        q = actor.queue
        if actor.remote is not None:       # hosted by a peer: calls go there, in order
            while q and (q[0].state == FINISHED or not q[0].deps_left):
                rec = q.popleft()
                if rec.state != FINISHED:
                    self._forward(actor.remote, rec)
            return
        w = actor.worker
        limit = actor.max_concurrency
        while q:
            rec = q[0]
            if rec.state == FINISHED:
                q.popleft()
                continue
            if rec.deps_left:
                break
            if len(w.inflight) >= limit and not self._pipelinable(rec):
                break     # its shared-memory arguments wait here, unmapped and spillable
            q.popleft()
            self._execute(w, rec)

    def _actor_dead(self, actor: ActorRecord, reason: str, cause: tuple | None = None) -> None:
        actor.state = DEAD
        actor.death_reason = reason
        actor.death_cause = cause
        if actor.assignment is not None:
            actor.assignment.pool.release(actor.assignment)
            actor.assignment = None
        name_key = (actor.namespace, actor.name)
        if actor.name and self.named.get(name_key) == actor.actor_id:
            del self.named[name_key]
            if getattr(self, "head", None) is not None:
                self.head.call("actor_unregister", (actor.namespace, actor.name,
                                                    actor.actor_id.hex()), _ignore)
        err = self._actor_error(actor)
        while actor.queue:
            rec = actor.queue.popleft()
            if rec.state != FINISHED:
                self._finish(rec, err)
        rec = self.tasks.get(actor.actor_id)
        if rec is not None:   # its arguments were kept for restarts; now let them go
            entry = self.objects.get(actor.handle_id)
            if entry is not None and entry.value is not None:
                freed: list = []
                self._task_ended(rec, freed)
                self._free(freed)
            else:
                self._finish(rec, err)

    def _actor_error(self, actor: ActorRecord) -> tuple:
        msg = actor.death_message()
        if actor.death_cause is not None:
            from ..serialization import deserialize
            try:
                cause = deserialize(*actor.death_cause[1])
                msg = f"{msg}\n\n{cause}"
            except Exception:
                pass
        return self._error_value(ActorDiedError(msg, actor.actor_id.hex()))

    def _actor_out_of_scope(self, actor: ActorRecord) -> None:
        if actor.state == DEAD or actor.detached:
            return
        actor.no_restart = True
        actor.exit_reason = "All references to the actor were removed."
        w = actor.worker
        if w is not None:
            self._send(w, (m.EXIT,))
            self.loop.call_later(config.get("kill_grace_s"), _kill_if_alive, w.proc)
        else:
            self._actor_dead(actor, actor.exit_reason)

    def _actor_worker_lost(self, actor: ActorRecord, w, exit_desc: str) -> None:
        actor.worker = None
        inflight = [r for r in w.inflight.values() if r.spec.kind == ACTOR_CALL]
        if actor.state == DEAD:
            return
        self._restart_or_end(
            actor, inflight, not actor.no_restart and actor.restarts_left != 0,
            actor.exit_reason or f"The actor's worker process died unexpectedly: {exit_desc}.",
            f"The actor's worker died ({exit_desc})")

    def _restart_or_end(self, actor: ActorRecord, calls: list, restartable: bool,
                        dead_reason: str, lost: str, counts: bool = True) -> None:
        """The process or node hosting ``actor`` is gone (``lost`` says how):
        start it again, with the in-flight ``calls`` that may be retried
        first in line (``counts``: this is a restart, not a first placement),
        or end it with ``dead_reason``."""
        if not restartable:
            for rec in calls:
                if rec.state != FINISHED:
                    self._finish(rec, self._error_value(ActorDiedError(
                        f"{dead_reason} (while running {rec.spec.name})", actor.actor_id.hex())))
            self._actor_dead(actor, dead_reason)
            return
        if counts:
            if actor.restarts_left > 0:
                actor.restarts_left -= 1
            actor.num_restarts += 1
            actor.state = RESTARTING
        retry = []
        for rec in calls:
            if rec.retries_left != 0:
                if rec.retries_left > 0:
                    rec.retries_left -= 1
                rec.state = WAITING_DEPS
                rec.deps_left = 0
                retry.append(rec)
            else:
                self._finish(rec, self._error_value(ActorDiedError(
                    f"{lost} while running {rec.spec.name}; the actor is restarting, but "
                    f"max_task_retries does not allow this call to be retried.",
                    actor.actor_id.hex())))
        actor.queue.extendleft(reversed(retry))
        self.pending_actors.append(actor)
        self._schedule()



def _ignore(ok, value) -> None:
    pass


def _name_taken(name: str, namespace: str) -> ValueError:
    return ValueError(f"an actor named {name!r} already exists in namespace {namespace!r}; "
                      f"pass get_if_exists=True to reuse it")


def _no_such_actor(name: str, namespace: str) -> ValueError:
    return ValueError(f"Failed to look up actor with name {name!r} in namespace "
                      f"{namespace!r}: no such live actor")


def _kill_if_alive(proc) -> None:
    if proc.poll() is None:
        proc.kill()
