"""Placement groups across nodes.

The node where a group is created owns it (its ``PlacementGroupRecord``,
``pg.nodes`` saying where each bundle lives: None for here, else a peer's
node id). Placing a group in a cluster:

1. ``_plan_bundles`` picks a node per bundle from this node's free
   resources and the peers' (as last heard, minus what we sent them), per
   strategy: PACK (all on one node if any can take them, else as few as
   possible), STRICT_PACK (one node or wait), SPREAD (nodes in turn, a node
   again only when no other fits), STRICT_SPREAD (a different node each, or
   wait).
2. Local bundles are reserved here at once; each peer is asked to reserve
   its share (peer op ``pg_reserve``: the peer keeps a record of the same
   group with pools only for its bundles). When every answer is yes the
   group is CREATED; on any no, what was reserved is given back
   (``pg_remove``) and the group waits for the next try.
3. A task or actor for a bundle on a peer is forwarded there
   (``_pg_forward_target``); the peer acquires from its own pool for it.
   With bundle index -1, local bundles are tried first.

Removal tells the peers (``pg_remove``); a peer whose owner's link dies
removes the groups it held for it. A peer that dies takes its bundles with
it: the group stays CREATED, its lost bundles are placed again elsewhere
when resources allow (Ray's rescheduling), and tasks for them wait.

Part of ``Node`` (a base class of it), under ``node.lock``.
"""
from __future__ import annotations

import time

from ..scheduler.resources import NodeResources
from .placement import CREATED, LOST, PENDING, REMOVED, PlacementGroupRecord, _fmt

RETRY_S = 0.2          # between attempts to place a group that a peer refused
NOWHERE = object()     # no node can take a bundle now


class NodeSpreadPlacement:
    # ------------------------------------------------------------- planning
    def _plan_bundles(self, pg: PlacementGroupRecord, indexes: list) -> list | None:
        """A node (None = here, else a peer's id) for each bundle in
        ``indexes``, or None when the strategy cannot be met now."""
        free = {None: dict(self.resources.available) if self.runs_tasks else {}}
        for nid, info in self.view.items():
            if nid in self.peers and not info.driver:
                free[nid] = dict(info.free)
        requests = [NodeResources.quantize(pg.bundles[i]) for i in indexes]
        order = [None] + sorted(n for n in free if n is not None)
        taken = {pg.nodes[i] for i in range(len(pg.bundles))
                 if pg.nodes and i not in indexes and pg.nodes[i] != LOST}

        def fits(nid, req):
            have = free[nid]
            return all(have.get(k, 0) >= v for k, v in req.items())

        def take(nid, req):
            for k, v in req.items():
                free[nid][k] = free[nid].get(k, 0) - v

        strategy = pg.strategy
        if strategy in ("PACK", "STRICT_PACK"):
            for nid in order:             # all on one node, this one first
                trial = dict(free[nid])
                ok = True
                for req in requests:
                    if not all(trial.get(k, 0) >= v for k, v in req.items()):
                        ok = False
                        break
                    for k, v in req.items():
                        trial[k] = trial.get(k, 0) - v
                if ok:
                    return [nid] * len(requests)
            if strategy == "STRICT_PACK":
                return None
        plan = []
        used = set(taken)
        turn = 0
        for req in requests:
            choice = NOWHERE
            if strategy in ("SPREAD", "STRICT_SPREAD"):
                for j in range(len(order)):
                    nid = order[(turn + j) % len(order)]
                    if nid not in used and fits(nid, req):
                        choice, turn = nid, turn + j + 1
                        break
                if choice is NOWHERE and strategy == "SPREAD":
                    choice = next((nid for nid in order if fits(nid, req)), NOWHERE)
            else:                          # PACK that did not fit one node: fill in order
                choice = next((nid for nid in order if fits(nid, req)), NOWHERE)
            if choice is NOWHERE:
                return None
            take(choice, req)
            used.add(choice)
            plan.append(choice)
        return plan

    # -------------------------------------------------------------- placing
    def _place_across(self, pg: PlacementGroupRecord) -> bool:
        """Try to place pending ``pg`` across the cluster; True when under
        way (reserving) or done, False to wait."""
        now = time.monotonic()
        if pg.reserving or pg.retry_at > now:
            return True
        indexes = list(range(len(pg.bundles)))
        plan = self._plan_bundles(pg, indexes)
        if plan is None:
            return False
        if all(nid is None for nid in plan):
            return "local"                # all here: the one-node path reserves them
        local = [i for i, nid in zip(indexes, plan) if nid is None]
        taken = []
        for i in local:
            a = self.resources.try_acquire(NodeResources.quantize(pg.bundles[i]))
            if a is None:
                for _, b in taken:
                    b.pool.release(b)
                return False
            taken.append((i, a))
        pg.nodes = list(plan)
        pg.pools = [None] * len(pg.bundles)
        pg.reserved = []
        for i, a in taken:
            pg.reserved.append(a)
            pg.pools[i] = NodeResources(pg.bundles[i], {g: a.gpu_share for g in a.gpu_ids})
        self._reserve_on_peers(pg, {i: nid for i, nid in enumerate(plan) if nid is not None})
        return True

    def _reserve_on_peers(self, pg: PlacementGroupRecord, where: dict) -> None:
        by_peer: dict = {}
        for i, nid in where.items():
            by_peer.setdefault(nid, []).append(i)
        pg.reserving = len(by_peer)
        pg.refused = False
        for nid, idx in by_peer.items():
            link = self.peers[nid]
            info = self.view.get(nid)
            for i in idx:
                if info is not None:
                    info.take(NodeResources.quantize(pg.bundles[i]))
            self._peer_call(link, "pg_reserve", (pg.pg_id, pg.bundles, idx, pg.strategy),
                            lambda ok, value, pg=pg, nid=nid, idx=idx:
                            self._pg_reserved(pg, nid, idx, ok and value is True))

    def _pg_reserved(self, pg: PlacementGroupRecord, nid: bytes, idx: list, ok: bool) -> None:
        pg.reserving -= 1
        if not ok:
            pg.refused = True
            for i in idx:
                pg.nodes[i] = LOST
        if pg.reserving:
            return
        if pg.state == REMOVED:
            self._pg_release_peers(pg)
            return
        if pg.refused:                    # all or nothing: give back and try again later
            if pg.state == PENDING:
                self._pg_release_peers(pg)
                for a in pg.reserved:
                    a.pool.release(a)
                pg.reserved, pg.pools, pg.nodes = [], [], []
                pg.retry_at = time.monotonic() + RETRY_S
                self.loop.call_later(RETRY_S, self._schedule_soon)
            return                        # a CREATED group re-placing lost bundles retries later
        if pg.state == PENDING:
            pg.state = CREATED
            self._pg_created(pg)
        self._schedule()

    def _schedule_soon(self) -> None:
        with self.lock:
            self._schedule()

    def _pg_release_peers(self, pg: PlacementGroupRecord) -> None:
        """Give back the bundles peers hold for ``pg`` (and count their
        resources free again in our view of them, as forwarded tasks do)."""
        for i, nid in enumerate(pg.nodes):
            info = self.view.get(nid) if nid is not None and nid != LOST else None
            if info is not None:
                info.take(NodeResources.quantize(pg.bundles[i]), -1)
        for nid in {n for n in pg.nodes if n is not None and n != LOST}:
            link = self.peers.get(nid)
            if link is not None:
                self._peer_call(link, "pg_remove", (pg.pg_id,), _ignore)

    def _replace_lost_bundles(self, pg: PlacementGroupRecord) -> None:
        """A CREATED group lost bundles with a dead node: place them again."""
        now = time.monotonic()
        if pg.reserving or pg.retry_at > now:
            return
        lost = [i for i, nid in enumerate(pg.nodes) if nid == LOST]
        plan = self._plan_bundles(pg, lost)
        if plan is None:
            pg.retry_at = now + RETRY_S
            return
        remote = {}
        for i, nid in zip(lost, plan):
            if nid is None:
                a = self.resources.try_acquire(NodeResources.quantize(pg.bundles[i]))
                if a is None:
                    continue
                pg.reserved.append(a)
                pg.pools[i] = NodeResources(pg.bundles[i], {g: a.gpu_share for g in a.gpu_ids})
                pg.nodes[i] = None
            else:
                pg.nodes[i] = nid
                remote[i] = nid
        if remote:
            self._reserve_on_peers(pg, remote)

    def _pg_infeasible_in_cluster(self, pg: PlacementGroupRecord) -> str | None:
        """In a cluster nothing is infeasible for good (nodes may join), but
        a group no set of nodes can hold gets a warning saying why."""
        if self._pg_unplaceable(pg) is not None:
            def still() -> bool:
                return pg.state == PENDING and self._pg_unplaceable(pg) is not None
            self._warn_unless_resolved(still, (
                f"shoal: placement group {pg.name or pg.pg_id.hex()} cannot be placed yet: "
                f"{self._pg_unplaceable(pg)}; it waits until nodes that can hold it join.\n"))
        return None

    def _pg_unplaceable(self, pg: PlacementGroupRecord) -> str | None:
        """Why no set of the cluster's nodes could ever hold ``pg``, or None."""
        totals = [self.resources.total] if self.runs_tasks else []
        totals += [info.total for info in self.view.values() if not info.driver]
        if pg.strategy == "STRICT_SPREAD" and len(pg.bundles) > len(totals):
            return (f"STRICT_SPREAD puts each of its {len(pg.bundles)} bundles on a different "
                    f"node, and this cluster has {len(totals)} node(s)")
        for b in pg.bundles:
            req = NodeResources.quantize(b)
            if not any(all(t.get(k, 0) >= v for k, v in req.items()) for t in totals):
                return f"no node of the cluster can hold its bundle {_fmt(b)}"
        return None

    # --------------------------------------------------------- the peer side
    def _svc_pg_reserve(self, link, request_id, reply, pg_id, bundles, indexes, strategy) -> None:
        """A peer asks us to hold ``indexes`` of its group: all or none."""
        pg = self.placement_groups.get(pg_id)
        if pg is None:
            pg = PlacementGroupRecord(pg_id, bundles, strategy, None, None, False)
            pg.owner = link
            pg.state = CREATED
            pg.pools = [None] * len(bundles)
            pg.nodes = [link.node_id] * len(bundles)
            self.placement_groups[pg_id] = pg
        taken = []
        for i in indexes:
            a = self.resources.try_acquire(NodeResources.quantize(bundles[i])) \
                if self.runs_tasks else None
            if a is None:
                for _, b in taken:
                    b.pool.release(b)
                reply(True, False)
                return
            taken.append((i, a))
        for i, a in taken:
            pg.reserved.append(a)
            pg.pools[i] = NodeResources(bundles[i], {g: a.gpu_share for g in a.gpu_ids})
            pg.nodes[i] = None
        reply(True, True)

    def _pg_owner_lost(self, link) -> None:
        for pg in list(self.placement_groups.values()):
            if pg.owner is link and pg.state != REMOVED:
                self._pg_remove(pg)

    def _pg_peer_lost(self, link) -> None:
        """Bundles we placed on ``link``'s node are gone with it."""
        for pg in self.placement_groups.values():
            if pg.owner is None and pg.state != REMOVED and link.node_id in pg.nodes:
                for i, nid in enumerate(pg.nodes):
                    if nid == link.node_id:
                        pg.nodes[i] = LOST
                if pg.state == CREATED:
                    self.lost_bundles = True

    # ------------------------------------------------------------ forwarding
    def _pg_forward_target(self, rec):
        """The peer a task or actor in a spread group must go to, or None
        to run it here (or wait for a local bundle)."""
        pg = self.placement_groups.get(rec.placement[0])
        if pg is None or pg.state != CREATED or not pg.nodes or pg.owner is not None:
            return None
        index = rec.placement[1]
        if index >= 0:
            nid = pg.nodes[index]
            return self.peers.get(nid) if nid is not None and nid != LOST else None
        for i, pool in enumerate(pg.pools):
            if pool is not None and pool.fits_now(rec.request):
                return None
        for nid in pg.nodes:
            if nid is not None and nid != LOST and nid in self.peers:
                return self.peers[nid]
        return None


def _ignore(ok, value) -> None:
    pass
