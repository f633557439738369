"""Which of a group's other members still live, for the waits that cannot
poll pids themselves: the torch backends (torch_group.py), the ring's
receives (ring.py) and the rendezvous while a group forms (rendezvous.py).

A member on this node is a pid and its start time (``waiting.Member``).
A member on another node is looked up through shoal, at a cost: its node
gone from this node's view of the cluster (``shoal.nodes()``: the head
declared it dead, or lost it) means the member went with it; a dead worker
row in the state API with its pid, ended after it started, means it died.
Only a node seen in the view before can be "gone" (a driver's own node is
never listed there).

``Watchdog`` is one thread per torch group, owned by the group: started when
it forms, stopped and joined when it closes. It checks the members on this
node every LOCAL_S and those elsewhere every REMOTE_S, and on the first
death calls ``on_death(message)`` once and ends.
"""
from __future__ import annotations

import threading
import time
from typing import NamedTuple

from .waiting import Member

LOCAL_S = 0.2
REMOTE_S = 3.0


class Death(NamedTuple):
    rank: int
    why: str              # "rank 2 (pid 4242) died"


def live_nodes() -> set[str] | None:
    """The node ids in this node's view of the cluster; None if shoal cannot say."""
    try:
        import shoal
        return {row["NodeID"] for row in shoal.nodes()}
    except Exception:          # noqa: BLE001 - no answer is no news
        return None


def dead_workers() -> dict[tuple[str, int], float] | None:
    """(node id, pid) -> end time (s) of every dead worker the state API
    lists; None if it could not answer."""
    try:
        from ..util.state import list_workers
        rows = list_workers(filters=[("is_alive", "=", False)], limit=None, timeout=2)
    except Exception:          # noqa: BLE001 - no answer is no news
        return None
    return {(r["node_id"], r["pid"]): (r.get("end_time_ms") or 0) / 1000 for r in rows}


class Others:
    """The other members of a group as one process can check them: by pid
    on its node (``here``), through shoal elsewhere. ``nodes`` and
    ``workers`` are the lookups (tests pass fakes)."""

    def __init__(self, members: dict[int, dict], here: str, nodes=live_nodes,
                 workers=dead_workers):
        self.here, self._nodes, self._workers = here, nodes, workers
        self.local: list[Member] = []
        self.remote: list[tuple[str, Member]] = []
        self._seen: set[str] = set()           # nodes listed in some earlier view
        for rank, info in sorted(members.items()):
            self.add(rank, info)
        self.nodes_gone()                      # remember which nodes are there now

    def add(self, rank: int, info: dict) -> None:
        member = Member(rank, info["pid"], info["started"])
        if info.get("node_id") == self.here:
            self.local.append(member)
        else:
            self.remote.append((info.get("node_id"), member))

    def dead_here(self) -> list[Death]:
        return [_died(m) for m in self.local if not m.alive()]

    def nodes_gone(self) -> set[str]:
        """Nodes of members elsewhere that were in the view and are not now."""
        if not self.remote:
            return set()
        listed = self._nodes()
        if listed is None:
            return set()
        gone = {node for node, _ in self.remote if node in self._seen and node not in listed}
        self._seen |= listed
        return gone

    def lost(self, rank: int) -> str | None:
        """Why member ``rank`` (elsewhere) is gone with its node, or None."""
        gone = self.nodes_gone()
        for node, m in self.remote:
            if m.rank == rank and node in gone:
                return _lost(node, m).why
        return None

    def dead_elsewhere(self) -> list[Death]:
        gone = self.nodes_gone()
        dead = [_lost(node, m) for node, m in self.remote if node in gone]
        rest = [(node, m) for node, m in self.remote if node not in gone]
        ended = self._workers() if rest else None
        for node, m in rest:
            end = (ended or {}).get((node, m.pid))
            if end is not None and end >= m.started - 1:       # not an earlier owner of the pid
                dead.append(_died(m))
        return sorted(dead)

    def dead(self) -> list[Death]:
        """Every member known dead now, here and elsewhere."""
        return sorted(self.dead_here() + self.dead_elsewhere())


def _died(m: Member) -> Death:
    return Death(m.rank, f"rank {m.rank} (pid {m.pid}) died")


def _lost(node: str, m: Member) -> Death:
    return Death(m.rank, f"rank {m.rank} (pid {m.pid}) was lost with its node {node[:12]}")


def describe(dead: list[Death]) -> str:
    return "; ".join(d.why for d in dead)


class Watchdog:
    """Checks ``others`` from a thread of its own until ``stop`` or the first
    death, which it reports once through ``on_death(message)``."""

    def __init__(self, name: str, others: Others, on_death, local_s: float = LOCAL_S,
                 remote_s: float = REMOTE_S):
        self.others, self.on_death = others, on_death
        self.local_s, self.remote_s = local_s, remote_s
        self.failure: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"shoal-collective-watchdog-{name}")

    def start(self) -> None:
        if self.others.local or self.others.remote:
            self._thread.start()

    def stop(self) -> None:
        """Stop checking and join the thread (it ends within one check)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        next_remote = time.monotonic() + self.remote_s
        while not self._stop.wait(self.local_s):
            dead = self.others.dead_here()
            if not dead and self.others.remote and time.monotonic() >= next_remote:
                dead = self.others.dead_elsewhere()
                next_remote = time.monotonic() + self.remote_s
            if dead and not self._stop.is_set():
                self.failure = describe(dead)
                self.on_death(self.failure)
                return
