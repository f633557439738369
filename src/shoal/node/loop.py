"""The node's I/O thread: one selector, callbacks, timers.

The loop thread is the only thread that registers file descriptors or runs
timers; other threads hand it work with ``call_soon``. It starts worker
processes too, so that PR_SET_PDEATHSIG (tied to the thread that forked)
holds for the node's whole life.
"""
from __future__ import annotations

import heapq
import itertools
import os
import selectors
import threading
import time
from collections import deque


class EventLoop:
    def __init__(self, name: str = "shoal-node-loop"):
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._wake_r, selectors.EVENT_READ, (self._drain_wakeups, None))
        self._calls: deque = deque()
        self._timers: list = []
        self._seq = itertools.count()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.on_error = None

    def start(self) -> None:
        self._thread.start()

    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def call_soon(self, fn, *args) -> None:
        self._calls.append((fn, args))
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake (pipe full) or closing

    def call_later(self, delay: float, fn, *args) -> None:
        if self.in_loop():
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn, args))
        else:
            self.call_soon(self.call_later, delay, fn, *args)

    def add_reader(self, fd: int, callback, arg=None) -> None:
        self._sel.register(fd, selectors.EVENT_READ, (callback, arg))

    def set_writer(self, fd: int, callback, arg=None, want: bool = True) -> None:
        """Watch ``fd`` for writability too (``want``) or stop watching it."""
        try:
            key = self._sel.get_key(fd)
        except (KeyError, ValueError):
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
        if key.events != events:
            self._sel.modify(fd, events, (key.data[0], arg, callback) if want else key.data[:2])

    def remove(self, fd: int) -> None:
        try:
            self._sel.unregister(fd)
        except (KeyError, ValueError):
            pass

    def stop(self) -> None:
        self._stopping = True
        self.call_soon(lambda: None)
        if not self.in_loop():
            self._thread.join(timeout=10)

    def _drain_wakeups(self, _arg) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _run(self) -> None:
        sel = self._sel
        while not self._stopping:
            timeout = None
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            if self._calls:
                timeout = 0
            for key, mask in sel.select(timeout):
                data = key.data
                try:
                    if mask & selectors.EVENT_WRITE and len(data) > 2:
                        data[2](data[1])
                    if mask & selectors.EVENT_READ:
                        data[0](data[1])
                except Exception as e:  # a bug in a handler must not kill the loop
                    self._report(e)
            while self._calls:
                fn, args = self._calls.popleft()
                try:
                    fn(*args)
                except Exception as e:
                    self._report(e)
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, fn, args = heapq.heappop(self._timers)
                try:
                    fn(*args)
                except Exception as e:
                    self._report(e)
        sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _report(self, e: BaseException) -> None:
        if self.on_error is not None:
            self.on_error(e)
        else:
            import traceback
            traceback.print_exception(e)
