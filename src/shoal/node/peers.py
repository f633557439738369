"""Nodes working together: tasks forwarded to other nodes, objects that live
on another node, and what a peer's death costs.

Links. A ``PeerLink`` is one authenticated TCP connection to another node
(cluster/peering.py dials and accepts them; the lower node id dials). It sits
on the node's loop like a worker socket, and either side may send on it:
FORWARD (run this task here), PUSH (object values), RELEASE, CALL/REPLY
(``peer_wait``, ``cancel``), EXPORT (a function) and OUTPUT (what the
workers of the node running a forwarded task printed).

Forwarding. A task that cannot start here (no free resources, none of the
kind it asks for, a large argument held elsewhere, SPREAD, affinity to
another node) goes to a peer whose free resources, as last heard through
the head and minus what we have sent it since, can take it. The peer runs it
as its own (never forwarding it on) and answers the FORWARD, as it would a
``peer_wait`` on the returns, with their values. Our task record stays RUNNING with
the link as its "worker"; if the peer dies the task is retried elsewhere
(``max_retries``) or fails with NodeDiedError.

Borrowed values. A value sent to a peer (``_export``) keeps the same object
id there. Small values go inline; a value in shared memory goes as a REMOTE
marker ``(holder node id, size, layout)``, and one not made yet as PENDING
(the receiver then asks ``peer_wait`` for it). The sender pins its entry
once per push (``link.pushed``); the receiver counts what it got from each
link on the entry (``origins``) and sends RELEASE with those counts when it
frees the entry, so the sender's copy lives exactly while some borrower
needs it. Values nested in a pushed value are pushed with it. A REMOTE value
is fetched into this node's store when a task or ``get`` here needs its
bytes (``_fetch``; peering.Fetcher, a thread per transfer).

A lost link undoes all of it: our pins for its copies and the refs we held
for its tasks go, tasks we forwarded to it retry, and entries that relied on
it (a REMOTE or PENDING value with no other origin) are lost: rebuilt from
lineage where we made them, ObjectLostError otherwise.

Fetching the bytes of borrowed values is in fetch.py, actors on other
nodes and named actors in remote_actors.py.

Part of ``Node`` (a base class of it), under ``node.lock``.
"""
from __future__ import annotations

import socket
import threading
import time

from ..exceptions import NodeDiedError, TaskCancelledError
from ..scheduler.resources import NodeResources
from ..scheduler.task import ACTOR_CALL, ACTOR_CREATE, STREAMING, TASK, TaskSpec
from ..transport import messages as m
from ..transport.framing import Connection
from .actors import DEAD
from .logs import write_output
from .packages import NodePackages
from .records import FINISHED, HERE, NODE_GONE, RUNNING, WAIT, uncount

LOCALITY_BYTES = 1 << 20       # arguments this large on one peer draw the task there
INFEASIBLE_WARN_S = 2.0        # a request no node can meet is reported after this long
DIAL_RETRY_S = 2.0             # between attempts to link to a node that did not answer
PEER_OPS = frozenset({"peer_wait", "cancel", "kill_actor", "pg_reserve", "pg_remove",
                      "actor_handle", "state", "logs"})


class PeerInfo:
    """What the head last said about another node, and our use of it since."""
    __slots__ = ("node_id", "address", "total", "free", "cpu_slack", "driver")

    def __init__(self, node_id: bytes, address: tuple, total: dict, free: dict,
                 driver: bool = False):
        self.node_id = node_id
        self.address = address
        self.total = total
        self.free = free
        self.driver = driver         # a driver's node: it runs nothing
        # forwarded tasks may queue a little on a busy peer, to keep it fed
        self.cpu_slack = total.get("CPU", 0)

    def has_room(self, request: dict) -> bool:
        if self.driver:
            return False
        free = self.free
        for k, v in request.items():
            have = free.get(k, 0) + (self.cpu_slack if k == "CPU" else 0)
            if have < v:
                return False
        return True

    def fits_total(self, request: dict) -> bool:
        return not self.driver and all(self.total.get(k, 0) >= v for k, v in request.items())

    def take(self, request: dict, sign: int = 1) -> None:
        free = self.free
        for k, v in request.items():
            free[k] = free.get(k, 0) - sign * v


class PeerLink:
    """One connection to another node. Shaped like a WorkerRecord where the
    node's code treats both alike (``conn``, ``blocked``, ``actor``...)."""
    is_peer = True
    actor = None
    lease = None
    proc = None
    pid = None

    def __init__(self, conn: Connection, node_id: bytes, address):
        self.conn = conn
        self.node_id = node_id
        self.row_id = node_id        # a forwarded task's history row names the node it ran on
        self.address = address
        self.state = "alive"
        self.inflight: dict = {}     # task_id -> our TaskRecord it runs for us
        self.pushed: dict = {}       # object_id -> pins we hold for its borrowed copies
        self.held: dict = {}         # object_id -> refs we hold for returns of its tasks
        self.calls: dict = {}        # request_id -> callback(ok, value)
        self.next_call = 0
        self.functions: set = set()  # function ids sent over this link
        self.packages: set = set()   # working-dir packages sent over this link
        self.submitted = False       # it sent us tasks: it wants their output
        self.blocked = 0

    def __repr__(self):
        return f"<peer {self.node_id.hex()[:12]}>"


class NodePeers:
    """Expects ``self.peers`` ({node_id: PeerLink}), ``self.view`` ({node_id:
    PeerInfo}, None outside a cluster) and ``self.fetching`` ({object_id:
    REMOTE value being fetched})."""

    # -------------------------------------------------------------- joining
    def join_cluster(self, token: str, fetcher, log, address, driver: bool = False,
                     head=None) -> None:
        """Called by the agent: from now on this node works with peers. A
        driver's node (``driver``) dials every node and is never sent work."""
        with self.lock:
            self.view = {}
            self.driver_node = driver
            self.peer_address = tuple(address)     # where our PeerListener listens
            self.head = head                       # HeadRequests: the named-actor directory
            self.peer_token = token
            self.fetcher = fetcher
            self.peer_log = log
            self.dialing: dict = {}     # node_id -> when we may dial it (again)
            self.dial_failed: set = set()

    def update_view(self, nodes: list) -> None:
        """The head's list of nodes (from the agent's heartbeat thread)."""
        dial = []
        with self.lock:
            if self.view is None or self.stopped:
                return
            alive = {}
            for n in nodes:
                nid = bytes.fromhex(n["node_id"])
                address = n.get("peer_address")
                if nid == self.node_id or n.get("state") != "ALIVE" or not address:
                    continue
                alive[nid] = PeerInfo(nid, tuple(address),
                                      NodeResources.quantize(n.get("resources") or {}),
                                      NodeResources.quantize(n.get("available") or {}),
                                      bool(n.get("driver")))
            for nid in list(self.peers):
                # gone from the head's list: dead. (A node that linked to us
                # before our view knew it is kept: it joined after our last look.)
                if nid not in alive and nid in self.view:
                    self._close_link(self.peers[nid])
            self.view = alive
            self.unreachable &= alive.keys()
            for nid, info in alive.items():
                if nid in self.peers or self.dialing.get(nid, 0.0) > time.monotonic():
                    continue
                if self.driver_node or (not info.driver and self.node_id < nid):
                    self.dialing[nid] = float("inf")
                    dial.append(info)
            self._schedule()
        for info in dial:
            threading.Thread(target=self._dial, args=(info,), daemon=True,
                             name="shoal-peer-dial").start()

    def wait_for_links(self, timeout: float) -> None:
        """Until every working node we know of is linked (a new driver's
        first tasks should see them all), or ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(nid in self.peers for nid, info in self.view.items() if not info.driver):
                    return
            time.sleep(0.01)

    def _dial(self, info: PeerInfo) -> None:
        from ..cluster.peering import dial_link
        try:
            sock, their_id = dial_link(info.address, self.peer_token, self.node_id,
                                       self.peer_address)
        except (OSError, ConnectionError) as e:
            with self.lock:
                first = info.node_id not in self.dialing or self.dialing[info.node_id] == \
                    float("inf") and info.node_id not in self.dial_failed
                self.dial_failed.add(info.node_id)
                self.dialing[info.node_id] = time.monotonic() + DIAL_RETRY_S
            if first:     # it retries every DIAL_RETRY_S while the head lists it as alive
                self.peer_log(f"cannot reach node {info.node_id.hex()[:12]} at "
                              f"{info.address[0]}:{info.address[1]}: {e}")
            return
        with self.lock:
            self.dialing.pop(info.node_id, None)
            self.dial_failed.discard(info.node_id)
        if their_id != info.node_id:
            sock.close()
            return
        self.attach_peer(sock, their_id, info.address)

    def attach_peer(self, sock: socket.socket, node_id: bytes, address) -> None:
        sock.setblocking(False)
        link = PeerLink(Connection(sock), node_id, address)
        with self.lock:
            if self.stopped:
                sock.close()
                return
            old = self.peers.get(node_id)
            if old is not None:
                self._close_link(old)
            self.peers[node_id] = link
            self.unreachable.discard(node_id)
        self.loop.call_soon(self.loop.add_reader, link.conn.fileno(), self._on_link_readable, link)
        with self.lock:
            self._schedule()

    def rejoined(self, new_id: bytes) -> None:
        """The head fenced us: every link and borrowed value is void, and
        our processes learn the new id."""
        with self.lock:
            for link in list(self.peers.values()):
                self._close_link(link)
            self.node_id = new_id
            self.worker_env["SHOAL_NODE_ID"] = new_id.hex()
            for w in self.workers.values():
                self._send(w, (m.NODE_ID, new_id))

    def _close_link(self, link: PeerLink) -> None:
        """Drop a link now (its peer is dead or replaced)."""
        if link.state == "dead":
            return
        try:
            link.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._peer_lost(link, f"node {link.node_id.hex()[:12]} died or left the cluster")

    # ------------------------------------------------------------- messages
    def _on_link_readable(self, link: PeerLink) -> None:
        self._handle_input(link, self._link_handlers, self._on_link_closed)

    def _on_link_closed(self, link: PeerLink) -> None:
        with self.lock:
            self._peer_lost(link, f"the connection to node {link.node_id.hex()[:12]} closed "
                                  f"(its agent died or the network failed)")

    def _l_forward(self, link, msg, freed) -> None:
        link.submitted = True
        touched = self._accept(link, msg[2], freed, release=False)
        spec = TaskSpec.from_wire(msg[1])
        objects = self.objects
        for rid in spec.return_ids():      # held for the peer until it collects them
            objects.add_ref(rid)
            link.held[rid] = link.held.get(rid, 0) + 1
        self._submit(spec, link)
        for oid in touched:
            objects.unpin(oid, freed)
        # the FORWARD is also the request for the results: answered as a peer_wait
        self._l_call(link, (m.CALL, msg[3], "peer_wait", (spec.return_ids(),)), freed)

    def _l_push(self, link, msg, freed) -> None:
        self._accept(link, msg[1], freed)

    def _l_release(self, link, msg, freed) -> None:
        objects, pushed = self.objects, link.pushed
        for oid, n in msg[1]:
            uncount(pushed, oid, n)
            for _ in range(n):
                objects.unpin(oid, freed)

    def _l_call(self, link, msg, freed) -> None:
        _, request_id, op, args = msg

        def reply(ok, value, link=link, request_id=request_id):
            if link.state != "dead":
                self._send(link, (m.REPLY, request_id, ok, value))
        if op not in PEER_OPS:
            reply(False, ValueError(f"{op!r} is not a peer operation"))
            return
        self._service(link, request_id, op, args, reply)

    def _l_reply(self, link, msg, freed) -> None:
        callback = link.calls.pop(msg[1], None)
        if callback is not None:
            callback(msg[2], msg[3])

    def _l_export(self, link, msg, freed) -> None:
        self.functions[msg[1]] = msg[2]

    def _l_output(self, link, msg, freed) -> None:
        _, to_stderr, text, job = msg
        if self.driver_node:       # the driver is this process: print its job's here
            if job is None or job == self.job_id:
                write_output(to_stderr, text)
            return
        self._to_drivers(to_stderr, text, job, to_peers=False)

    _link_handlers = {m.FORWARD: _l_forward, m.PUSH: _l_push, m.RELEASE: _l_release,
                      m.CALL: _l_call, m.REPLY: _l_reply, m.EXPORT: _l_export,
                      m.OUTPUT: _l_output, m.PACKAGE: NodePackages._l_package}

    def _peer_call(self, link: PeerLink, op: str, args: tuple, callback) -> None:
        link.next_call += 1
        link.calls[link.next_call] = callback
        self._send(link, (m.CALL, link.next_call, op, args))

    # ------------------------------------------------------- borrowed values
    def _export(self, link: PeerLink, ids) -> list:
        """``ids`` and the values nested in them, as they go to ``link``'s
        node; each is pinned here until the peer releases it."""
        objects, entries, pushed = self.objects, self.objects.entries, link.pushed
        out, seen, stack = [], set(), list(ids)
        while stack:
            oid = stack.pop()
            if oid in seen:
                continue
            seen.add(oid)
            e = entries.get(oid)
            value = e.value if e is not None else None
            if e is None or (value is None and not e.expected):
                out.append((oid, self._lost_value(oid), False))    # not pinned: not counted
                continue
            if value is None:
                value = (m.PENDING, None, ())
            elif value[0] == m.SHM or value[0] == m.SPILLED:
                value = (m.REMOTE, (self.node_id, value[1][1], value[1][2]), value[2])
            objects.pin(oid)
            pushed[oid] = pushed.get(oid, 0) + 1
            out.append((oid, value, True))
            stack.extend(value[2])
        return out

    def _accept(self, link: PeerLink, values: list, freed: list, release: bool = True) -> list:
        """Take values a peer sent (a PUSH, a FORWARD's arguments, a
        peer_wait reply); returns their ids. With ``release`` False they stay
        pinned once each, for the caller to unpin."""
        objects = self.objects
        wait, touched = [], []
        for oid, _, _ in values:      # held while we sort them out (_store frees the unheld)
            objects.pin(oid)
            touched.append(oid)
        for oid, value, pinned in values:
            e = objects.entries[oid]
            if pinned:
                if e.origins is None:
                    e.origins = {}
                e.origins[link] = e.origins.get(link, 0) + 1
            if e.value is not None:
                continue                  # we have it already: the copy is only counted
            kind = value[0]
            if kind == m.PENDING:
                if not e.expected:
                    e.expected = True
                    wait.append(oid)
                continue
            if kind == m.REMOTE and value[1][0] == self.node_id:
                value = self._lost_value(oid)   # ours, and we no longer have it
            e.expected = True
            self._store(oid, value, freed)
        if wait:
            self._peer_call(link, "peer_wait", (wait,),
                            lambda ok, vals, link=link, wait=wait:
                            self._on_peer_values(link, wait, ok, vals))
        if release:
            for oid in touched:
                objects.unpin(oid, freed)
        return touched

    def _on_peer_values(self, link: PeerLink, wanted: list, ok: bool, values) -> None:
        freed: list = []
        if ok:
            self._accept(link, values, freed)
        else:
            for oid in wanted:
                e = self.objects.get(oid)
                if e is not None and e.value is None:
                    self._store(oid, self._error_value(values), freed)
        self._free(freed)

    def _release_origins(self, oid: bytes, e) -> None:
        """``e`` was freed here: give back what its origins pinned for us."""
        origins, e.origins = e.origins, None
        for link, n in origins.items():
            if link.state != "dead":
                self._send(link, (m.RELEASE, [(oid, n)]))

    def _svc_peer_wait(self, link, request_id, reply, ids) -> None:
        def answer(ok, value):
            if not ok:
                reply(False, value)
                return
            reply(True, self._export(link, ids))
            freed: list = []
            for oid in ids:       # the export pins them now: drop the refs held for the peer
                n = link.held.pop(oid, 0)
                if n:
                    self.objects.remove_ref(oid, n, freed)
            self._free(freed)
        self._await_objects(link, request_id, ids, len(ids), answer, values=False)

    # ---------------------------------------------------------- feasibility
    def _infeasible_in_cluster(self, rec, reason: str) -> str | None:
        """A request this node can never satisfy: fine if a peer can; if
        none can, the task waits (nodes may join) with a warning."""
        request = rec.request
        if any(info.fits_total(request) for info in self.view.values()):
            return None

        def still() -> bool:
            return rec.state != FINISHED and not any(
                info.fits_total(request) for info in self.view.values())
        self._warn_unless_resolved(still, (
            f"shoal: {rec.spec.name} cannot be scheduled on any node of the cluster yet "
            f"({reason}); it waits until a node that has those resources joins.\n"))
        return None

    def _warn_unless_resolved(self, still, text: str) -> None:
        """Tell the drivers ``text`` if ``still()`` holds INFEASIBLE_WARN_S
        from now: news of a node that just joined may lag by a heartbeat."""
        def check():
            with self.lock:
                if self.stopped or not still():
                    return
            self.peer_log(text.strip())
            self._to_drivers(True, text)
        self.loop.call_later(INFEASIBLE_WARN_S, check)

    # ----------------------------------------------------------- forwarding
    def _route_for(self, spec, client, request: dict):
        """A new task's route: HERE (sent by a peer, a streaming generator,
        affinity to this node), a peer's node id (affinity), "SPREAD", or
        None (wherever it fits)."""
        if getattr(client, "is_peer", False) or spec.num_returns == STREAMING:
            return HERE
        strategy = spec.options.get("strategy") if spec.options else None
        if strategy is None:
            return None
        if strategy[0] == "NODE":
            if strategy[1] == self.node_id:
                # soft: here unless this node can never run it
                return HERE if not strategy[2] or self.resources.fits_total(request) else None
            if strategy[1] in self.view or strategy[1] in self.peers:
                return strategy[1]
            return None if strategy[2] else HERE     # soft: anywhere, if that node is gone
        return "SPREAD" if strategy[0] == "SPREAD" else None

    def _forward_first(self, rec):
        """Before trying this node: the peer ``rec`` should go to by its
        route (affinity, SPREAD's turn) or its arguments' locality; None to
        try here first."""
        route = rec.route
        if route is None:
            return self._locality_peer(rec) if rec.spec.deps else None
        if route == "SPREAD":
            order = [None] + sorted(self.peers)
            turn = self.spread_turn
            self.spread_turn += 1
            nid = order[turn % len(order)]
            if nid is None:
                return None
            info = self.view.get(nid)
            return self.peers[nid] if info is not None and info.has_room(rec.request) else None
        link = self.peers.get(route)       # affinity to a peer (HERE never gets here)
        if link is not None:
            return link
        soft = rec.spec.options["strategy"][2]
        if route in self.view and not (soft and route in self.unreachable):
            return WAIT                    # known, not linked yet: not somewhere else
        if soft:
            rec.route = None               # soft, and that node is gone: anywhere
            return self._forward_first(rec)
        return NODE_GONE

    def _forward_overflow(self, rec):
        """No room here: the peer with room and the most free CPU, or None."""
        if rec.route is not None and rec.route != "SPREAD":
            return None
        best, score = None, None
        for nid, link in self.peers.items():
            info = self.view.get(nid)
            if info is None or not info.has_room(rec.request):
                continue
            s = info.free.get("CPU", 0)
            if score is None or s > score:
                best, score = link, s
        return best

    def _locality_peer(self, rec):
        """The peer holding at least LOCALITY_BYTES more of ``rec``'s
        arguments than we do, if it has room."""
        entries = self.objects.entries
        here, there = 0, {}
        for _, dep in rec.spec.deps:
            value = entries[dep].value
            if value is None:
                continue
            if value[0] == m.REMOTE:
                holder = value[1][0]
                there[holder] = there.get(holder, 0) + value[1][1]
            elif value[0] == m.SHM or value[0] == m.SPILLED:
                here += value[1][1]
        if not there:
            return None
        holder = max(there, key=there.get)
        if there[holder] - here < LOCALITY_BYTES:
            return None
        info = self.view.get(holder)
        link = self.peers.get(holder)
        if link is None or info is None or not info.has_room(rec.request):
            return None
        return link

    def _forward(self, link: PeerLink, rec) -> None:
        spec = rec.spec
        rec.state = RUNNING
        rec.worker = link
        rec.started_at = time.monotonic()
        link.inflight[spec.task_id] = rec
        fid = spec.function_id
        if fid is not None and fid not in link.functions:
            link.functions.add(fid)
            self._send(link, (m.EXPORT, fid, self.functions.get(fid)))
        self._send_package(link, spec)
        ids = [dep for _, dep in spec.deps]
        ids.extend(spec.contained)
        link.next_call += 1         # the peer answers it with the results (a peer_wait)
        link.calls[link.next_call] = lambda ok, values, link=link, rec=rec: \
            self._forwarded_done(link, rec, ok, values)
        self._send(link, (m.FORWARD, spec.to_wire(), self._export(link, ids) if ids else (),
                          link.next_call))
        info = self.view.get(link.node_id)
        if info is not None:
            info.take(rec.request)

    def _forwarded_done(self, link: PeerLink, rec, ok: bool, values) -> None:
        freed: list = []
        mine = link.inflight.pop(rec.spec.task_id, None) is rec and rec.state == RUNNING
        if rec.spec.kind == ACTOR_CREATE:
            if not ok:
                values = [(rec.spec.return_ids()[0], self._error_value(values), False)]
            self._accept(link, values, freed)
            actor = self.actors.get(rec.spec.task_id)
            if mine and actor is not None and actor.remote is link:
                self._remote_actor_created(link, actor, values[0][1])
            self._free(freed)
            self._schedule()
            return
        info = self.view.get(link.node_id) if self.view else None
        if info is not None and mine:
            info.take(rec.request, -1)
        if not ok:
            values = [(oid, self._error_value(values), False) for oid in rec.spec.return_ids()]
        self._accept(link, values, freed)
        if mine:
            if any(v[0] == m.REMOTE for _, v, _ in values) and rec.spec.max_retries != 0 \
                    and rec.retries_left != 0:
                self._keep_lineage(rec)
            self._task_ended(rec, freed)
        self._free(freed)
        self._schedule()

    # ---------------------------------------------------------------- death
    def _peer_lost(self, link: PeerLink, why: str) -> None:
        if link.state == "dead":
            return
        link.state = "dead"
        self.loop.call_soon(self._drop_link_fd, link, link.conn.fileno())
        if self.peers.get(link.node_id) is link:
            del self.peers[link.node_id]
            # probably dead: soft affinity moves on now, hard waits for the head's word
            self.unreachable.add(link.node_id)
        if self.stopped:
            return
        for key in [k for k in self.requests if k[0] is link]:
            req = self.requests.pop(key)
            req.done = True
            for oid in req.ids:
                self.objects.remove_waiter(oid, req.callback)
            req.callback = None
        objects = self.objects
        freed: list = []
        for oid, n in link.pushed.items():
            for _ in range(n):
                objects.unpin(oid, freed)
        link.pushed = {}
        for oid, n in link.held.items():
            objects.remove_ref(oid, n, freed)
        link.held = {}
        self._pg_owner_lost(link)
        self._pg_peer_lost(link)
        inflight, link.inflight = link.inflight, {}
        for actor in list(self.actors.values()):
            if actor.remote is link and actor.state != DEAD:
                calls = [r for r in inflight.values() if r.state == RUNNING and
                         r.spec.actor_id == actor.actor_id and r.spec.kind == ACTOR_CALL]
                self._remote_actor_lost(actor, calls, why)
        for rec in inflight.values():
            if rec.state != RUNNING or rec.spec.kind != TASK:
                continue
            if rec.cancelled:
                self._finish(rec, self._error_value(TaskCancelledError(
                    f"task {rec.spec.name} was cancelled")))
            elif rec.retries_left != 0:
                if rec.retries_left > 0:
                    rec.retries_left -= 1
                self._requeue(rec)
            else:
                self._finish(rec, self._error_value(NodeDiedError(
                    f"{rec.spec.name} was running on node {link.node_id.hex()[:12]}, which "
                    f"died: {why}. Its retries (max_retries={rec.spec.max_retries}) are "
                    f"spent.")))
        link.calls = {}
        for oid, e in list(objects.entries.items()):
            origins = e.origins
            if not origins or link not in origins:
                continue
            del origins[link]
            if origins:
                continue
            e.origins = None
            value = e.value
            if oid in self.fetching:
                continue        # the fetch fails or succeeds by itself
            if (value is None and e.expected) or (value is not None and value[0] == m.REMOTE):
                self._remote_lost(oid, e, why)
        self._free(freed)
        self._schedule()

    def _drop_link_fd(self, link: PeerLink, fd: int) -> None:
        """On the loop thread: stop watching the link's socket, then close it
        (in this order, so that a reused fd number is never unwatched)."""
        self.loop.remove(fd)
        link.conn.close()

