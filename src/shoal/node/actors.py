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

from collections import deque

from ..scheduler.task import TaskSpec, object_id_for

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
        self.assignment = None
        self.queue: deque = deque()
        self.restarts_left = opts.get("max_restarts", 0)
        self.num_restarts = 0
        self.name = opts.get("name")
        self.namespace = opts.get("namespace")
        self.detached = opts.get("lifetime") == "detached"
        self.class_name = spec.name
        self.no_restart = False
        self.exit_reason = None
        self.death_reason = None
        self.death_cause = None

    def death_message(self) -> str:
        reason = self.death_reason or "The actor is dead."
        return f"Actor {self.class_name} ({self.actor_id.hex()}) is dead: {reason}"
