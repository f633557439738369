"""Actors on other nodes: placing an actor on a peer (our record becomes a
proxy that forwards its calls in order), borrowed handles (a call to an
actor we only hold a handle to goes through the node the handle came from),
the head's directory of named actors, and restarting an actor whose node
died.

Part of ``Node`` (a base class of it), under ``node.lock``.
"""
from __future__ import annotations

import pickle

from ..scheduler.task import object_id_for
from ..transport import messages as m
from .actors import ALIVE, DEAD, PENDING, ActorRecord, _ignore, _name_taken, _no_such_actor


class NodeRemoteActors:
    # --------------------------------------------------------------- actors
    def _forward_actor(self, link, actor, rec) -> None:
        """Have the peer host ``actor``: it creates it and runs its calls; we
        forward them (``_pump_actor``) and restart it elsewhere if it dies."""
        actor.remote = link
        self._forward(link, rec)

    def _remote_actor_created(self, link, actor, value: tuple) -> None:
        if value[0] == m.ERROR:
            actor.no_restart = True
            self._actor_dead(actor, "The actor's constructor raised an error; see the cause "
                             "above.", cause=value)
            return
        actor.state = ALIVE
        self._pump_actor(actor)

    def _borrowed_actor(self, actor_id: bytes):
        """A call to an actor we only hold a handle to: reach it through the
        node the handle came from."""
        e = self.objects.get(object_id_for(actor_id, 1))
        link = next((link for link in (e.origins or ()) if link.state != "dead"), None) \
            if e is not None else None
        if link is None:
            return None
        actor = self.actors[actor_id] = ActorRecord.proxy(actor_id, link)
        return actor

    # ------------------------------------------------ named actors (the head)
    def _register_name_in_cluster(self, client, reply, claim, actor_id, get_if_exists) -> None:
        """Claim the name in the head's directory; if a live actor elsewhere
        holds it, give it back (get_if_exists) or refuse. Registrations of
        the same name made here meanwhile get the same answer."""
        key = (claim.namespace, claim.name)
        row = {"actor_id": actor_id.hex(), "node_id": self.node_id.hex(),
               "meta": pickle.dumps(claim.meta).hex() if claim.meta is not None else None}

        def answered(ok, holder):
            with self.lock:
                if self.claims.get(actor_id) is not claim:     # its creator died meanwhile
                    if ok and holder is None:
                        self.head.call("actor_unregister", (*key, actor_id.hex()), _ignore)
                    return
                if ok and holder is None:
                    claim.confirmed = True
                    reply(True, None)
                    for _, waiting in claim.registrations:
                        waiting(True, (actor_id, claim.meta, None))
                    claim.registrations.clear()
                    return
                del self.claims[actor_id]
                if self.named.get(key) == actor_id:
                    del self.named[key]
                if not ok:
                    for answer in [reply] + [r for _, r in claim.registrations]:
                        answer(False, holder)
                    return
                if get_if_exists:
                    self._handle_from(client, reply, holder)
                else:
                    reply(False, _name_taken(*reversed(key)))
                for other, waiting in claim.registrations:
                    self._handle_from(other, waiting, holder)
        self.head.call("actor_register", (*key, row), answered)

    def _get_actor_in_cluster(self, client, reply, name, namespace) -> None:
        def answered(ok, holder):
            with self.lock:
                if not ok:
                    reply(False, holder)
                elif holder is None:
                    reply(False, _no_such_actor(name, namespace))
                else:
                    self._handle_from(client, reply, holder)
        self.head.call("actor_lookup", (namespace, name), answered)

    def _handle_from(self, client, reply, holder: dict) -> None:
        """A handle to the actor the directory row ``holder`` names, on
        another node: its handle object is borrowed from that node, and the
        ref to it is counted here for ``client`` (the reply carries a lease)."""
        actor_id = bytes.fromhex(holder["actor_id"])
        meta = pickle.loads(bytes.fromhex(holder["meta"])) if holder.get("meta") else None
        link = self.peers.get(bytes.fromhex(holder["node_id"]))
        if link is None:
            reply(False, ValueError(f"the actor {actor_id.hex()} lives on node "
                                    f"{holder['node_id'][:12]}, which this node cannot reach"))
            return

        def borrowed(ok, values, link=link):
            with self.lock:
                if not ok:
                    reply(False, values)
                    return
                freed: list = []
                touched = self._accept(link, values, freed, release=False)
                handle_id = object_id_for(actor_id, 1)
                lease = self._lease(client, handle_id)
                for oid in touched:
                    self.objects.unpin(oid, freed)
                self._free(freed)
                reply(True, (actor_id, meta, lease))
        self._peer_call(link, "actor_handle", (actor_id,), borrowed)

    def _svc_actor_handle(self, link, request_id, reply, actor_id) -> None:
        actor = self.actors.get(actor_id)
        claim = self.claims.get(actor_id) if actor is None else None
        if claim is not None:       # named here, creation not submitted yet: answered then
            claim.handle_requests.append((link, reply))
            return
        if actor is None or actor.state == DEAD or actor.borrowed:
            raise ValueError(f"actor {actor_id.hex()} does not live on this node")
        reply(True, self._export(link, [object_id_for(actor_id, 1)]))

    def _remote_actor_lost(self, actor, calls: list, why: str) -> None:
        """The node hosting ``actor`` died: restart it elsewhere if it may."""
        actor.remote = None
        created = actor.state != PENDING
        restartable = not actor.borrowed and not actor.no_restart and (
            actor.restarts_left != 0 or not created)
        limit = "" if actor.borrowed else (
            f"; max_restarts={actor.spec.options.get('max_restarts', 0)} does not allow "
            f"restarting it")
        self._restart_or_end(actor, calls, restartable,
                             actor.exit_reason or f"The node hosting it died ({why}){limit}",
                             f"The node hosting the actor died ({why})", counts=created)
