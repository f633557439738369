"""Fetching a borrowed object's bytes from the node that holds them, and
serving our own to peers (node/peers.py lends the markers; cluster/peering.py
moves the bytes).

A REMOTE value is fetched into this node's store when a task or ``get``
here needs it: the entry waits meanwhile (value None, expected), so whoever
needs it just waits. A fetch that finds its holder dead asks the node the
marker came from again, which rebuilds what it made; with nobody to ask,
the object is lost (lineage or ObjectLostError).

Part of ``Node`` (a base class of it), under ``node.lock``.
"""
from __future__ import annotations

import os
import threading
import time

from ..exceptions import ObjectStoreFullError
from ..scheduler.task import mapped_id
from ..transport import messages as m

ORIGIN_RETRIES = 60             # asks of a marker's origin while it notices a holder's death
ORIGIN_RETRY_S = 0.5


class NodeFetch:
    # ------------------------------------------------------------- fetching
    def _fetch(self, oid: bytes, e) -> None:
        """Pull a REMOTE value's bytes into this node's store. The entry waits
        meanwhile (value None, expected), so whoever needs it just waits."""
        marker = e.value
        holder = marker[1][0]
        link = self.peers.get(holder)      # a node that linked to us may be newer than our view
        info = link or (self.view.get(holder) if self.view else None)
        if info is None:
            self._ask_origin(oid, e, f"node {holder.hex()[:12]} that held it is gone")
            return
        e.value = None
        e.expected = True
        self.fetching[oid] = marker
        self._start_fetch(oid, info.address)

    def _ask_origin(self, oid: bytes, e, why: str) -> None:
        """The copy a REMOTE marker names cannot be read (its holder died).
        The node we got the marker from may know better (it rebuilds lost
        objects it made): ask it again, while it notices the death; with no
        such node the object is lost."""
        holder = e.value[1][0]
        link = next((link for link in (e.origins or ()) if link.state != "dead"
                     and link.node_id != holder), None)
        if link is None:
            self._remote_lost(oid, e, why)
            return
        freed: list = []
        for inner in e.value[2]:
            self.objects.unpin(inner, freed)
        e.value = None                   # pending until the origin answers
        e.expected = True
        self._free(freed)
        self._query_origin(oid, link, holder, why, 0)

    def _query_origin(self, oid: bytes, link, holder: bytes, why: str, tries: int) -> None:
        def answered(ok, values):
            freed: list = []
            if ok:
                stale = [v for o, v, _ in values if o == oid and v[0] == m.REMOTE
                         and v[1][0] == holder]
                if stale:        # the same dead copy: the origin has not noticed yet
                    values = [(o, (m.PENDING, None, ()) if o == oid else v, p)
                              for o, v, p in values]
                self._accept(link, values, freed)
                if stale:
                    self.loop.call_later(ORIGIN_RETRY_S, self._requery_origin,
                                         oid, link, holder, why, tries + 1)
            else:
                entry = self.objects.get(oid)
                if entry is not None and entry.value is None:
                    self._store(oid, self._error_value(values), freed)
            self._free(freed)
        self._peer_call(link, "peer_wait", ([oid],), answered)

    def _requery_origin(self, oid, link, holder, why, tries) -> None:
        with self.lock:
            e = self.objects.get(oid)
            if e is None or e.value is not None:
                return
            if link.state == "dead" or tries >= ORIGIN_RETRIES:
                e.value = (m.REMOTE, (holder, 0, None), ())
                self._remote_lost(oid, e, why)
                return
            self._query_origin(oid, link, holder, why, tries)

    def _fetch_first(self, ids, then) -> bool:
        """Fetch the REMOTE values among ``ids``; if any must be waited for,
        call ``then`` once they are all here and return True."""
        entries = self.objects.entries
        for oid in ids:
            e = entries.get(oid)
            if e is not None and e.value is not None and e.value[0] == m.REMOTE:
                self._fetch(oid, e)
        waiting = [oid for oid in ids if (e := entries.get(oid)) is not None and e.value is None]
        if not waiting:
            return False
        left = [len(waiting)]

        def arrived(oid, entry):
            left[0] -= 1
            if left[0] == 0:
                then()
        for oid in waiting:
            self.objects.add_waiter(oid, arrived)
        return True

    def _start_fetch(self, oid: bytes, address, deadline: float | None = None) -> None:
        marker = self.fetching.get(oid)
        if marker is None:
            return
        e = self.objects.entries.get(oid)
        if e is None or e.value is not None:     # freed meanwhile
            self._fetch_abandoned(oid, marker)
            return
        size = marker[1][1]
        try:
            offset = self._alloc(size)
        except ObjectStoreFullError as err:
            if not getattr(err, "waitable", False):
                self._fetch_failed(oid, err)
                return
            if deadline is None:
                deadline = time.monotonic() + self.store_full_timeout
            self._wait_for_memory(("retry", lambda: self._start_fetch(oid, address, deadline),
                                   lambda full: self._fetch_failed(oid, full)), deadline)
            return
        threading.Thread(target=self._fetch_thread, args=(address, oid, marker, offset),
                         daemon=True, name="shoal-fetch").start()

    def _fetch_abandoned(self, oid: bytes, marker: tuple) -> None:
        self.fetching.pop(oid, None)
        freed: list = []
        for inner in marker[2]:
            self.objects.unpin(inner, freed)
        self._free(freed)

    def _fetch_failed(self, oid: bytes, err: BaseException) -> None:
        marker = self.fetching.get(oid)
        if marker is None:
            return
        self._fetch_abandoned(oid, marker)
        e = self.objects.entries.get(oid)
        if e is not None and e.value is None:
            freed: list = []
            self._store(oid, self._error_value(err), freed)
            self._free(freed)

    def _fetch_thread(self, address, oid: bytes, marker: tuple, offset: int) -> None:
        size = marker[1][1]
        err = self.fetcher.fetch(address, oid, size, self.arena.writable(offset, size))
        with self.lock:
            self.fetching.pop(oid, None)
            freed: list = []
            e = self.objects.entries.get(oid)
            if e is None or e.value is not None:      # freed (or made again) meanwhile
                self.allocator.free(offset)
                self._memory_released()
                self._fetch_abandoned(oid, marker)
            elif err is not None:
                self.allocator.free(offset)
                self._memory_released()
                e.value = marker
                self._ask_origin(oid, e, err)
            else:
                value = (m.SHM, (offset, size, marker[1][2]), marker[2])
                entry, waiters = self.objects.set_value(oid, value)
                self.resident[oid] = None
                for cb in waiters or ():
                    cb(oid, entry)
                self.objects.release_if_unheld(oid, freed)
            self._free(freed)
            self._schedule()

    def _remote_lost(self, oid: bytes, e, why: str) -> None:
        """A borrowed value whose bytes we cannot get any more."""
        marker = e.value
        if marker is not None:
            freed: list = []
            for inner in marker[2]:
                self.objects.unpin(inner, freed)
            e.value = None
            self._free(freed)
        self._on_object_lost(oid, e, why)

    def transfer_source(self, oid: bytes):
        """For a peer's fetch (listener thread): (fd, offset, size, done,
        memory or None) to send, or why not. The object is counted as mapped
        until ``done``."""
        with self.lock:
            e = self.objects.entries.get(oid)
            value = e.value if e is not None else None
            if value is None or value[0] not in (m.SHM, m.SPILLED):
                return f"object {oid.hex()} is not held by node {self.node_id.hex()[:12]}"
            if value[0] == m.SPILLED:
                path, size, _ = value[1]
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError as err:
                    return f"its spill file cannot be read ({err})"
                return fd, 0, size, lambda: os.close(fd), None
            mid = mapped_id(oid)
            self.objects.add_ref(mid)          # not spilled or freed while it is sent
            offset, size, _ = value[1]

            def done(mid=mid):
                with self.lock:
                    freed: list = []
                    self.objects.remove_ref(mid, 1, freed)
                    self._free(freed)
            return self.arena.fd, offset, size, done, self.arena.writable(offset, size)
