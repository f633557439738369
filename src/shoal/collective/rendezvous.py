"""How the members of a collective group find each other.

One small async actor per group, named ``shoal.collective:<group>`` in the
job's namespace (so any member on any node finds it through the named-actor
directory). Each member creates it if absent (``get_if_exists``) and calls
``join(rank, world_size, backend, info)``: the call waits inside the actor
until every rank has joined, then returns every member's ``info`` (node,
pid, listening address...), a fresh group id and a per-group secret that the
ring backend's connections prove they know. A join that is still incomplete
after ``timeout_s`` fails for every waiting member with the missing ranks.

While a group forms the actor checks, every WATCH_S, that the members who
joined still live (liveness.py: pid on its node, shoal elsewhere) and that
no actor declared for a missing rank is dead (the state API): a death fails
the join for every waiting member at once, naming the rank.

``create_collective_group`` (from the driver) only *declares* the group:
which actor has which rank. A declared member initialises itself on its
first collective call by asking the actor for its rank.

After join every member calls ``leave``; when all have, the actor exits, so
a group costs a process only while it forms. A new ``join`` on a group that
completed (or failed) starts a new generation under the same name. A call
that reaches the actor as it exits (or finds its handle under the name just
before the name is freed) fails with ActorDiedError: ``call`` then asks
again, and the name gets a new actor.
"""
from __future__ import annotations

import asyncio
import secrets
import time

import shoal
from ..exceptions import ActorDiedError, CollectiveError
from .liveness import Death, Others, describe

ACTOR_PREFIX = "shoal.collective:"
WATCH_S = 1.0


class _Rendezvous:
    def __init__(self, group_name: str):
        self.group_name = group_name
        self.declared: dict[str, tuple] = {}        # actor id hex -> (rank, world, backend, timeout)
        self.deaths: dict[str, str] = {}            # generation -> who died while it formed
        self._new_generation()

    def _new_generation(self) -> None:
        self.world = None
        self.backend = None
        self.members: dict[int, dict] = {}
        self.left: set[int] = set()
        self.complete = asyncio.Event()
        self.settled = asyncio.Event()          # complete, or a member died
        self.failed = False
        self.watch = None
        self.generation = secrets.token_hex(8)
        self.secret = secrets.token_hex(32)

    async def declare(self, ranks_by_actor: dict, world_size: int, backend: str,
                      timeout_s: float) -> None:
        """Which actor has which rank; a new declaration replaces the last
        (a group re-declared with new actors must not see the old, dead ones)."""
        self.declared = {actor_id: (rank, world_size, backend, timeout_s)
                         for actor_id, rank in ranks_by_actor.items()}

    async def joined(self) -> list[int]:
        """The ranks in the group that is forming now (for tests and tools)."""
        return sorted(self.members)

    async def declared_rank(self, actor_id: str):
        return self.declared.get(actor_id)

    async def join(self, rank: int, world_size: int, backend: str, info: dict,
                   timeout_s: float) -> dict:
        if self.complete.is_set() or self.failed:
            self._new_generation()
        if self.world is None:
            self.world, self.backend = world_size, backend
        elif world_size != self.world:
            raise CollectiveError(
                f"collective group {self.group_name!r}: rank {rank} joined with world_size "
                f"{world_size}, others with {self.world}")
        elif backend != self.backend:
            raise CollectiveError(
                f"collective group {self.group_name!r}: rank {rank} asked for backend "
                f"{backend!r}, others for {self.backend!r}")
        if not 0 <= rank < world_size:
            raise CollectiveError(f"collective group {self.group_name!r}: rank {rank} is "
                                  f"outside 0..{world_size - 1}")
        if rank in self.members:
            raise CollectiveError(f"collective group {self.group_name!r}: rank {rank} "
                                  f"already joined (pid {self.members[rank].get('pid')})")
        self.members[rank] = info
        # this generation's own, should a new one start while we wait
        generation, members, settled = self.generation, self.members, self.settled
        answer = {"members": members, "group_id": generation, "secret": self.secret,
                  "backend": self.backend}
        if len(members) == self.world:
            self.complete.set()
            settled.set()
        elif self.watch is None:
            self.watch = asyncio.ensure_future(self._watch(generation))
        try:
            await asyncio.wait_for(settled.wait(), timeout_s)
        except asyncio.TimeoutError:
            if self.generation == generation:
                self.failed = True
            missing = sorted(set(range(world_size)) - set(members))
            raise CollectiveError(
                f"collective group {self.group_name!r}: rank(s) {missing} did not join "
                f"within {timeout_s:g} s (joined: {sorted(members)})") from None
        if len(members) < world_size:           # settled by a death
            raise CollectiveError(f"collective group {self.group_name!r}: "
                                  f"{self.deaths[generation]}; the group cannot form "
                                  f"(joined: {sorted(members)})")
        return dict(answer, members=[members[r] for r in range(world_size)])

    async def _watch(self, generation: str) -> None:
        """While ``generation`` forms: fail it once a member that joined, or
        the actor declared for a rank not in yet, is dead."""
        members, settled = self.members, self.settled
        others = Others({}, here=shoal.get_runtime_context().get_node_id())
        watched: set[int] = set()
        while True:
            await asyncio.sleep(WATCH_S)
            if settled.is_set() or self.generation != generation:
                return
            for rank in sorted(set(members) - watched):
                others.add(rank, members[rank])
                watched.add(rank)
            declared = {actor: rank for actor, (rank, world, *_) in self.declared.items()
                        if rank not in members and world == self.world}
            dead = await asyncio.get_running_loop().run_in_executor(
                None, _dead, others, declared)
            if dead and not settled.is_set() and self.generation == generation:
                self.failed = True
                self.deaths[generation] = describe(dead)
                # the dead will not leave: the actor may exit once the others have
                self.left |= {d.rank for d in dead}
                settled.set()
                return

    async def leave(self, rank: int, generation: str | None) -> None:
        if generation is None and self.failed:
            generation = self.generation         # a member whose join failed
        if generation != self.generation:
            return
        self.left.add(rank)
        if self.left >= set(self.members) and (self.complete.is_set() or self.failed):
            if not self._pending_declarations():
                shoal.actor.exit_actor()

    def _pending_declarations(self) -> bool:
        return bool(self.declared) and not self.complete.is_set()


def _dead(others: Others, declared: dict[str, int]) -> list[Death]:
    """Members that joined and died, and declared actors (id -> rank) that
    died before joining. Blocking (the state API): run on an executor."""
    dead = others.dead()
    if declared:
        try:
            from ..util.state import list_actors
            rows = list_actors(filters=[("state", "=", "DEAD")], limit=None, timeout=5)
        except Exception:          # noqa: BLE001 - no answer is no news
            rows = []
        dead += [Death(declared[r["actor_id"]],
                       f"rank {declared[r['actor_id']]} (actor {r['actor_id'][:12]}) died "
                       f"before joining ({r.get('death_cause') or 'dead'})")
                 for r in rows if r["actor_id"] in declared]
    return sorted(dead)


_RendezvousActor = None


def _actor_class():
    global _RendezvousActor
    if _RendezvousActor is None:
        _RendezvousActor = shoal.remote(num_cpus=0, max_restarts=0)(_Rendezvous)
    return _RendezvousActor


def rendezvous_actor(group_name: str):
    """The group's rendezvous actor, created if no member made it yet."""
    return _actor_class().options(name=ACTOR_PREFIX + group_name, get_if_exists=True,
                                  lifetime="detached").remote(group_name)


def call(group_name: str, method: str, *args, timeout: float | None = None):
    """(actor, result) of ``method(*args)`` on the group's rendezvous actor,
    made if absent; an actor that died as we called (it was exiting: its
    group was done) is replaced, until ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        actor = rendezvous_actor(group_name)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return actor, shoal.get(getattr(actor, method).remote(*args), timeout=left)
        except ActorDiedError:
            if deadline is not None and time.monotonic() >= deadline:
                raise
            time.sleep(0.01)     # until the dead actor's name is free


def declared_rank(group_name: str, actor_id: str):
    """(rank, world size, backend, timeout) declared for actor ``actor_id``,
    or None; an exiting actor under the name is waited out (up to 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        actor = existing_rendezvous(group_name)
        if actor is None:
            return None
        try:
            return shoal.get(actor.declared_rank.remote(actor_id))
        except ActorDiedError:
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)


def existing_rendezvous(group_name: str):
    try:
        return shoal.get_actor(ACTOR_PREFIX + group_name)
    except ValueError:
        return None


def join(group_name: str, rank: int, world_size: int, backend: str, info: dict,
         timeout_s: float) -> dict:
    """Join the group; every member's info (by rank), group id and secret."""
    try:
        actor, answer = call(group_name, "join", rank, world_size, backend, info, timeout_s,
                             timeout=timeout_s + 30)
    except CollectiveError as e:       # raised in the actor: a plain message here
        failed = existing_rendezvous(group_name)   # it stays until its members have left
        if failed is not None:
            failed.leave.remote(rank, None)
        raise CollectiveError(str(getattr(e, "cause", None) or e)) from None
    actor.leave.remote(rank, answer["group_id"])
    return answer
