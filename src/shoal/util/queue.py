"""A FIFO queue shared by tasks and actors (``ray.util.queue``).

The items live in an async actor holding an ``asyncio.Queue``; a ``Queue``
object is only that actor's handle plus ``maxsize``, so it pickles into any
task or actor, and every copy reaches the same items. A blocking ``get`` or
``put`` is a call that waits inside the actor's event loop, so the actor
keeps serving other callers meanwhile, and a task that waits on it gives its
CPU back (as any ``shoal.get`` inside a task does).

The actor answers "empty"/"full" with a flag instead of raising, so callers
get a plain ``Empty`` or ``Full``; a dead actor (killed, or the queue shut
down) gives ``ActorDiedError`` to every waiting and later call.
"""
from __future__ import annotations

import asyncio
import queue as _stdlib_queue
from collections.abc import Iterable

import shoal

__all__ = ["Queue", "Empty", "Full"]


class Empty(_stdlib_queue.Empty):
    """``get`` found nothing (at once, or within its timeout)."""


class Full(_stdlib_queue.Full):
    """``put`` found no room (at once, or within its timeout)."""


class _QueueActor:
    """Holds the items. Every method runs on the actor's event loop thread,
    the only thread that touches ``self.items``."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.items: asyncio.Queue = asyncio.Queue(maxsize)

    async def qsize(self) -> int:
        return self.items.qsize()

    # A zero timeout still takes what is there: asyncio.wait_for(..., 0)
    # gives up before the inner coroutine has run once, so try without waiting first.
    async def put(self, item, timeout: float | None) -> bool:
        if await self.put_nowait(item):
            return True
        try:
            await asyncio.wait_for(self.items.put(item), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def get(self, timeout: float | None) -> tuple[bool, object]:
        found, item = await self.get_nowait()
        if found:
            return found, item
        try:
            return True, await asyncio.wait_for(self.items.get(), timeout)
        except asyncio.TimeoutError:
            return False, None

    async def put_nowait(self, item) -> bool:
        try:
            self.items.put_nowait(item)
        except asyncio.QueueFull:
            return False
        return True

    async def put_nowait_batch(self, items: list) -> bool:
        """All of ``items`` or none of them."""
        if self.maxsize > 0 and self.items.qsize() + len(items) > self.maxsize:
            return False
        for item in items:
            self.items.put_nowait(item)
        return True

    async def get_nowait(self) -> tuple[bool, object]:
        try:
            return True, self.items.get_nowait()
        except asyncio.QueueEmpty:
            return False, None

    async def get_nowait_batch(self, count: int) -> list | None:
        """``count`` items, or None (and nothing taken) if there are fewer."""
        if count > self.items.qsize():
            return None
        return [self.items.get_nowait() for _ in range(count)]

    async def stop(self) -> None:
        shoal.actor.exit_actor()


_QueueActorClass = shoal.remote(_QueueActor)   # one class blob for every queue


class Queue:
    """A first-in first-out queue that tasks and actors share.

    ``maxsize`` <= 0 means unbounded. ``actor_options`` are passed to the
    backing actor's ``.options()`` (e.g. ``{"name": "jobs"}``)."""

    def __init__(self, maxsize: int = 0, actor_options: dict | None = None):
        self.maxsize = maxsize
        self.actor = _QueueActorClass.options(**(actor_options or {})).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    # -- state ---------------------------------------------------------------
    def size(self) -> int:
        """How many items the queue holds now."""
        return shoal.get(self._actor().qsize.remote())

    qsize = size

    def empty(self) -> bool:
        return self.size() == 0

    def full(self) -> bool:
        return self.maxsize > 0 and self.size() >= self.maxsize

    # -- put -----------------------------------------------------------------
    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``; if the queue is full, wait (up to ``timeout`` s) for
        room, or raise Full at once when ``block`` is False."""
        if not shoal.get(self._put_call(item, block, timeout)):
            raise Full

    async def put_async(self, item, block: bool = True, timeout: float | None = None) -> None:
        """``put`` for asyncio code: awaits instead of blocking the thread."""
        if not await self._put_call(item, block, timeout):
            raise Full

    def put_nowait(self, item) -> None:
        self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable) -> None:
        """Add every item of ``items`` at once, or raise Full and add none."""
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        items = list(items)
        if not shoal.get(self._actor().put_nowait_batch.remote(items)):
            raise Full(f"Cannot add {len(items)} items to a queue of maxsize {self.maxsize}")

    def _put_call(self, item, block: bool, timeout: float | None):
        actor = self._actor()
        if not block:
            return actor.put_nowait.remote(item)
        _check_timeout(timeout)
        return actor.put.remote(item, timeout)

    # -- get -----------------------------------------------------------------
    def get(self, block: bool = True, timeout: float | None = None):
        """Remove and return the oldest item; if the queue is empty, wait (up
        to ``timeout`` s) for one, or raise Empty at once when ``block`` is False."""
        found, item = shoal.get(self._get_call(block, timeout))
        if not found:
            raise Empty
        return item

    async def get_async(self, block: bool = True, timeout: float | None = None):
        """``get`` for asyncio code: awaits instead of blocking the thread."""
        found, item = await self._get_call(block, timeout)
        if not found:
            raise Empty
        return item

    def get_nowait(self):
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list:
        """The ``num_items`` oldest items, or raise Empty and take none."""
        if not isinstance(num_items, int) or isinstance(num_items, bool):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        items = shoal.get(self._actor().get_nowait_batch.remote(num_items))
        if items is None:
            raise Empty(f"Cannot get {num_items} items from the queue")
        return items

    def _get_call(self, block: bool, timeout: float | None):
        actor = self._actor()
        if not block:
            return actor.get_nowait.remote()
        _check_timeout(timeout)
        return actor.get.remote(timeout)

    # -- end -----------------------------------------------------------------
    def shutdown(self, force: bool = False, grace_period_s: float = 5) -> None:
        """Stop the backing actor; the items are lost. Without ``force`` the
        actor is asked to exit and killed if it has not within
        ``grace_period_s``. Calls still waiting get ActorDiedError."""
        actor, self.actor = self.actor, None
        if actor is None:
            return
        if not force:
            stopped, _ = shoal.wait([actor.stop.remote()], timeout=grace_period_s)
            if stopped:
                return
        shoal.kill(actor, no_restart=True)

    def _actor(self):
        if self.actor is None:
            raise RuntimeError("this Queue was shut down")
        return self.actor


def _check_timeout(timeout) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
