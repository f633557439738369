"""Placement groups and scheduling strategies on the node.

A placement group's bundles are reserved from the node's resources all at
once (or not at all); each reserved bundle becomes a small resource pool of
its own (a ``NodeResources`` holding the node's GPU devices it took), and a
task or actor scheduled into the group acquires from that pool instead of
the node's. Removing the group kills what runs in it, fails what waits for
it, and returns the reservation.

    PENDING --all bundles reserved--> CREATED --remove--> REMOVED
       +---------------------------- remove ------------------^

Pending groups are placed before queued tasks whenever resources free up,
so a stream of small tasks cannot starve a gang. Part of ``Node`` (a base
class of it), under ``node.lock``.

Strategies arrive in the spec's options as tuples (util/scheduling_strategies.py):
("SPREAD",), ("NODE", node_id, soft), ("PG", pg_id, bundle_index, capture).
"""
from __future__ import annotations

import sys
import time

from ..exceptions import (ActorUnschedulableError, InfeasibleTaskError,
                          TaskPlacementGroupRemoved, TaskUnschedulableError)
from ..object_store.table import DRIVER_OWNER
from ..scheduler.resources import NodeResources
from ..scheduler.task import ACTOR_CALL, ACTOR_CREATE, TASK, object_id_for
from ..serialization import pack_inline, serialize
from ..transport import messages as m
from .records import RUNNING
from .services import DRIVER

PENDING, CREATED, REMOVED = "PENDING", "CREATED", "REMOVED"
LOST = b"lost"       # pg.nodes entry of a bundle whose node died (spread_pg.py)
GONE = object()      # what acquiring from a removed group returns
_KEEP_REMOVED = 1000  # removed groups placement_group_table() still shows


class PlacementGroupRecord:
    __slots__ = ("pg_id", "name", "namespace", "bundles", "strategy", "state", "pools",
                 "reserved", "detached", "ready_id", "shapes", "infeasible", "created_at",
                 "nodes", "owner", "reserving", "refused", "retry_at")

    def __init__(self, pg_id: bytes, bundles: list, strategy: str, name: str, namespace: str,
                 detached: bool):
        self.pg_id = pg_id
        self.name = name
        self.namespace = namespace
        self.bundles = bundles
        self.strategy = strategy
        self.detached = detached
        self.state = PENDING
        self.pools: list = []          # one NodeResources per bundle, once CREATED
        self.reserved: list = []       # the node Assignments that back them
        self.ready_id = object_id_for(pg_id, 1)
        self.shapes = [NodeResources(b) for b in bundles]   # for feasibility checks
        self.infeasible = None
        self.created_at = time.time()
        # across nodes (spread_pg.py): where each bundle lives (None: here), the
        # peer link that owns this group if we only hold bundles for it, and
        # how many peers have yet to answer a reservation
        self.nodes: list = []
        self.owner = None
        self.reserving = 0
        self.refused = False
        self.retry_at = 0.0

    def table(self, node_id: str) -> dict:
        """This group as Ray's placement_group_table() describes one."""
        placed = self.state == CREATED
        return {
            "placement_group_id": self.pg_id.hex(),
            "name": self.name,
            "bundles": {i: dict(b) for i, b in enumerate(self.bundles)},
            "bundles_to_node_id": ({i: (node_id if n is None else n.hex()) for i, n in
                                    enumerate(self.nodes or [None] * len(self.bundles))
                                    if n is None or isinstance(n, bytes) and len(n) == 16}
                                   if placed else {}),
            "strategy": self.strategy,
            "state": self.state,
            "is_detached": self.detached,
            "stats": {"scheduling_state": "INFEASIBLE" if self.infeasible else
                      ("FINISHED" if placed else self.state),
                      "infeasible_reason": self.infeasible},
        }


class NodePlacement:
    """Placement-group services and strategy handling for ``Node``."""

    # ------------------------------------------------------------ services
    def _svc_pg_create(self, client, request_id, reply, pg_id, bundles, strategy, name,
                       namespace, detached) -> None:
        if name:
            other = self.pg_names.get((namespace, name))
            if other is not None:
                raise ValueError(f"a placement group named {name!r} already exists in "
                                 f"namespace {namespace!r}; remove it first or pick another name")
        pg = PlacementGroupRecord(pg_id, bundles, strategy, name, namespace, detached)
        self.placement_groups[pg_id] = pg
        if name:
            self.pg_names[(namespace, name)] = pg_id
        self.objects.expect(pg.ready_id, f"placement group {name or pg_id.hex()} ready",
                            DRIVER_OWNER if client is DRIVER else client)
        self.objects.pin(pg.ready_id)        # held until the group is removed
        reason = self._pg_infeasible(pg)
        if reason is not None:
            pg.infeasible = reason
            err = InfeasibleTaskError(f"placement group {name or pg_id.hex()} can never be "
                                      f"placed: {reason}")
            if self.fail_infeasible:
                self._pg_store_ready(pg, self._error_value(err))
            else:
                print(f"(shoal) warning: {err}", file=sys.stderr)
        else:
            self.pending_pgs.append(pg)
            self._schedule()
        reply(True, None)

    def _svc_pg_remove(self, client, request_id, reply, pg_id) -> None:
        pg = self.placement_groups.get(pg_id)
        if pg is None:
            raise ValueError(f"placement group {pg_id.hex()} does not exist")
        if pg.state != REMOVED:
            self._pg_remove(pg)
        reply(True, None)

    def _svc_pg_info(self, client, request_id, reply, pg_id, by_name) -> None:
        if by_name is not None:
            pg_id = self.pg_names.get(by_name)
            if pg_id is None:
                raise ValueError(f"Failed to look up placement group with name "
                                 f"{by_name[1]!r} in namespace {by_name[0]!r}: no such group")
        pg = self.placement_groups.get(pg_id)
        if pg is None:
            raise ValueError(f"placement group {pg_id.hex()} does not exist")
        reply(True, pg.table(self.node_id.hex()))

    def _svc_pg_table(self, client, request_id, reply) -> None:
        nid = self.node_id.hex()
        reply(True, {pg.pg_id.hex(): pg.table(nid) for pg in self.placement_groups.values()})

    # ------------------------------------------------------------ placing
    def _pg_infeasible(self, pg: PlacementGroupRecord) -> str | None:
        """Why ``pg`` can never be placed on this node, or None."""
        if self.view is not None:
            return self._pg_infeasible_in_cluster(pg)
        if pg.strategy == "STRICT_SPREAD" and len(pg.bundles) > 1:
            return (f"STRICT_SPREAD puts each of its {len(pg.bundles)} bundles on a different "
                    f"node, and this cluster has 1 node")
        trial = NodeResources(self.total_resources)
        for i, bundle in enumerate(pg.bundles):
            if trial.try_acquire(NodeResources.quantize(bundle)) is None:
                total = {}
                for b in pg.bundles:
                    for k, v in b.items():
                        total[k] = total.get(k, 0) + v
                return (f"its bundles need {_fmt(total)} together but this node has "
                        f"{_fmt(self.total_resources)} in total")
        return None

    def _place_pending_pgs(self) -> None:
        """Reserve every pending group that fits now, oldest first."""
        still = []
        for pg in self.pending_pgs:
            if pg.state != PENDING:
                continue
            if self.view is not None:
                # in a cluster even before any link is up: the plan keeps the
                # strategy (STRICT_SPREAD waits for peers, never doubles up here)
                placed = self._place_across(pg)
                if placed != "local":
                    if pg.state == PENDING:
                        still.append(pg)
                    continue
            taken = []
            for bundle in pg.bundles:
                a = self.resources.try_acquire(NodeResources.quantize(bundle))
                if a is None:
                    break
                taken.append(a)
            if len(taken) < len(pg.bundles):
                for a in taken:
                    a.pool.release(a)
                still.append(pg)
                continue
            pg.reserved = taken
            pg.pools = [NodeResources(b, {i: a.gpu_share for i in a.gpu_ids})
                        for b, a in zip(pg.bundles, taken)]
            pg.state = CREATED
            self._pg_created(pg)
        self.pending_pgs = still
        if self.lost_bundles:
            self.lost_bundles = False
            for pg in self.placement_groups.values():
                if pg.state == CREATED and pg.owner is None and LOST in pg.nodes:
                    self._replace_lost_bundles(pg)
                    if LOST in pg.nodes:
                        self.lost_bundles = True

    def _pg_created(self, pg: PlacementGroupRecord) -> None:
        from ..util.placement_group import PlacementGroup
        data, layout = pack_inline(serialize(PlacementGroup(pg.pg_id, pg.bundles)))
        self._pg_store_ready(pg, (m.INLINE, (data, layout), ()))

    def _pg_store_ready(self, pg: PlacementGroupRecord, value: tuple) -> None:
        freed: list = []
        self._store(pg.ready_id, value, freed)
        self._free(freed)

    def _pg_remove(self, pg: PlacementGroupRecord) -> None:
        was = pg.state
        pg.state = REMOVED
        if pg.name and self.pg_names.get((pg.namespace, pg.name)) == pg.pg_id:
            del self.pg_names[(pg.namespace, pg.name)]
        entry = self.objects.get(pg.ready_id)
        if was == PENDING and entry is not None and entry.value is None:
            self._pg_store_ready(pg, self._error_value(TaskPlacementGroupRemoved(
                f"placement group {pg.name or pg.pg_id.hex()} was removed before it was placed")))
        why = f"its placement group {pg.name or pg.pg_id.hex()} was removed"
        for rec in list(self.tasks.values()):
            placement = rec.placement
            if placement is None or placement[0] != pg.pg_id or rec.spec.kind != TASK:
                continue
            if rec.state == RUNNING and rec.worker is not None:
                rec.worker.proc.kill()      # its death ends the task (see _on_worker_lost)
            elif rec.state != RUNNING:
                self._finish(rec, self._pg_removed_value(rec))
        for actor in list(self.actors.values()):
            if actor.placement is not None and actor.placement[0] == pg.pg_id:
                actor.no_restart = True
                actor.exit_reason = f"The actor was killed: {why}."
                if actor.worker is not None:
                    actor.worker.proc.kill()
                elif actor.state != "DEAD":
                    self._actor_dead(actor, actor.exit_reason)
        self.removed_pgs.append(pg.pg_id)
        if len(self.removed_pgs) > _KEEP_REMOVED:     # the table remembers the latest only
            self.placement_groups.pop(self.removed_pgs.popleft(), None)
        if pg.nodes and pg.owner is None and not pg.reserving:
            self._pg_release_peers(pg)     # (a reservation under way is undone on its answer)
        for a in pg.reserved:
            a.pool.release(a)
        pg.reserved = []
        pg.pools = []
        freed: list = []
        self.objects.unpin(pg.ready_id, freed)
        self._free(freed)
        self._schedule()

    def _pg_removed_value(self, rec) -> tuple:
        pg = self.placement_groups.get(rec.placement[0])
        name = (pg.name if pg is not None else "") or rec.placement[0].hex()
        return self._error_value(TaskPlacementGroupRemoved(
            f"{rec.spec.name} cannot run: its placement group {name} was removed"))

    def _pg_gone(self, placement) -> bool:
        pg = self.placement_groups.get(placement[0])
        return pg is None or pg.state == REMOVED

    # ------------------------------------------------------------ acquiring
    def _acquire(self, placement, request: dict):
        """An Assignment for ``request``, None to wait, or GONE when the
        placement group it must run in was removed."""
        if placement is None:
            return self.resources.try_acquire(request)
        pg = self.placement_groups.get(placement[0])
        if pg is None or pg.state == REMOVED:
            return GONE
        if pg.state != CREATED:
            return None
        index = placement[1]
        pools = pg.pools if index < 0 else (pg.pools[index],)
        for pool in pools:
            if pool is None:           # that bundle lives on another node (spread_pg.py)
                continue
            a = pool.try_acquire(request)
            if a is not None:
                return a
        return None

    # ----------------------------------------------------------- strategies
    def _resolve_strategy(self, spec, parent) -> tuple:
        """(placement or None, error or None) for a new task or actor; a
        placement is (pg_id, bundle_index or -1, capture_child_tasks)."""
        strategy = spec.options.get("strategy") if spec.options is not None else None
        if strategy is None:
            inherited = self._captured_placement(parent)
            if inherited is None:
                return None, None
            if spec.options is None:
                spec.options = {}
            spec.options["strategy"] = strategy = inherited
        kind = strategy[0]
        if kind == "PG":
            return self._check_pg_strategy(spec, strategy)
        if kind == "NODE" and strategy[1] != self.node_id and not strategy[2] \
                and not (self.view and strategy[1] in self.view):
            cls = ActorUnschedulableError if spec.kind == ACTOR_CREATE else TaskUnschedulableError
            return None, cls(f"{spec.name} cannot be scheduled: NodeAffinitySchedulingStrategy("
                             f"soft=False) names node {strategy[1].hex()}, which does not "
                             f"exist or is dead (this cluster's node is {self.node_id.hex()})")
        return None, None    # SPREAD, or affinity to this node: one node serves all

    def _captured_placement(self, parent):
        if parent is None:
            return None
        placement = parent.placement
        if placement is None and parent.spec.kind == ACTOR_CALL:
            actor = self.actors.get(parent.spec.actor_id)
            placement = actor.placement if actor is not None else None
        if placement is not None and placement[2]:
            return ("PG", placement[0], -1, True)
        return None

    def _check_pg_strategy(self, spec, strategy) -> tuple:
        _, pg_id, index, capture = strategy
        pg = self.placement_groups.get(pg_id)
        if pg is None or pg.state == REMOVED:
            return None, TaskPlacementGroupRemoved(
                f"{spec.name} cannot be scheduled: placement group {pg_id.hex()} "
                f"{'was removed' if pg is not None else 'does not exist'}")
        if index >= len(pg.bundles):
            return None, ValueError(f"{spec.name}: bundle index {index} is out of range for "
                                    f"placement group {pg_id.hex()} with {len(pg.bundles)} "
                                    f"bundle(s)")
        request = NodeResources.quantize(spec.resources) if spec.resources else {}
        shapes = pg.shapes if index < 0 else (pg.shapes[index],)
        if not any(shape.fits_total(request) for shape in shapes):
            where = "any bundle" if index < 0 else f"bundle {index} ({_fmt(pg.bundles[index])})"
            return None, InfeasibleTaskError(
                f"{spec.name} requires {_fmt(spec.resources)}, which does not fit in {where} "
                f"of placement group {pg.name or pg_id.hex()}; ask for less or reserve "
                f"bigger bundles")
        return (pg_id, index, capture), None


def _fmt(resources: dict) -> str:
    def amount(k, v):
        return f"{v / 2**30:.3g} GiB" if k in ("memory", "object_store_memory") else f"{v:g}"
    return "{" + ", ".join(f"{k}: {amount(k, v)}" for k, v in sorted(resources.items())) + "}"
