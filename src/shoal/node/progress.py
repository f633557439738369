"""Progress bars in the driver's terminal, one per name, fed by every
process of the cluster (shoal.util.tqdm).

A worker's bar reports itself as a marker line on its stdout
(``PROGRESS_MARKER`` + JSON: the bar's id, name, total, count, closed),
which travels with the rest of its output (node/logs.py relays it to the
driver's terminal, or as OUTPUT to connected drivers and over peer links)
and is swallowed here instead of printed. A bar in the driver itself
reports directly. Bars with the same name are summed: many tasks advancing
"preprocess" draw one bar. On a terminal the bars are redrawn in place on
stderr at most ten times a second; elsewhere (a log file, CI) a bar that
moved gets a line every ``LINE_EVERY_S``, and its last line once all its
parts are closed and it has had no report for ``QUIET_S``, or at
``shoal.shutdown()``.
"""
from __future__ import annotations

import json
import sys
import threading
import time

PROGRESS_MARKER = "\x1bshoal-progress:"
REDRAW_S = 0.1
LINE_EVERY_S = 5.0
QUIET_S = 0.3
WIDTH = 30


class _Bar:
    __slots__ = ("parts", "unit", "started", "last_line", "said", "last_report")

    def __init__(self, unit: str):
        self.parts: dict = {}           # bar id -> (count, total, closed)
        self.unit = unit
        self.started = time.monotonic()
        self.last_line = self.started
        self.last_report = self.started
        self.said = None                # (count, total) of the last line written

    def totals(self) -> tuple:
        count = sum(p[0] for p in self.parts.values())
        totals = [p[1] for p in self.parts.values()]
        total = sum(totals) if totals and all(t is not None for t in totals) else None
        closed = all(p[2] for p in self.parts.values())
        return count, total, closed


class Progress:
    """The driver's bars (one per name); any thread may report."""

    def __init__(self, stream=None):
        self.stream = stream
        self.lock = threading.Lock()
        self.bars: dict = {}            # name -> _Bar, in first-seen order
        self.drawn = 0                  # lines of bars on the terminal now
        self.last_draw = 0.0
        # a thread of this object's (started with the first bar, joined by
        # finish()) ends bars that went quiet and keeps the clocks moving
        self.ticker = None
        self.stopping = threading.Event()

    def _out(self):
        return self.stream or sys.stderr

    def report(self, bar_id: str, name: str, count: float, total, closed: bool,
               unit: str = "it") -> None:
        with self.lock:
            bar = self.bars.get(name)
            if bar is None:
                bar = self.bars[name] = _Bar(unit)
                if self.ticker is None:
                    self.stopping.clear()
                    self.ticker = threading.Thread(target=self._tick, daemon=True,
                                                   name="shoal-progress")
                    self.ticker.start()
            bar.parts[bar_id] = (count, total, closed)
            bar.last_report = time.monotonic()
            self._draw(force=closed)

    def _tick(self) -> None:
        while not self.stopping.wait(QUIET_S):
            with self.lock:
                if self._tty():
                    self._draw(force=True)
                else:
                    self._lines(time.monotonic(), quiet=True)

    def finish(self) -> None:
        """The driver is done (shutdown): every bar's last state stays shown."""
        self.stopping.set()
        if self.ticker is not None:
            self.ticker.join(5)
            self.ticker = None
        with self.lock:
            if not self._tty():
                self._lines(time.monotonic(), final=True)
            self.drawn = 0              # what follows is written below the bars
            self.bars.clear()

    def marker(self, text: str) -> bool:
        """Handle one line of worker output if it is a bar's report."""
        if not text.startswith(PROGRESS_MARKER):
            return False
        try:
            r = json.loads(text[len(PROGRESS_MARKER):])
            self.report(r["id"], str(r["name"]), float(r["n"]), r.get("total"),
                        bool(r.get("closed")), str(r.get("unit", "it")))
        except (ValueError, KeyError, TypeError):
            pass                        # a malformed report is dropped, not printed
        return True

    def before_output(self) -> None:
        """Worker lines are about to be written: take the bars off first."""
        if self.drawn:
            with self.lock:
                self._erase()

    def after_output(self) -> None:
        if self.bars:
            with self.lock:
                self._draw(force=True)

    # ------------------------------------------------------------- drawing
    def _tty(self) -> bool:
        try:
            return self._out().isatty()
        except (AttributeError, ValueError):
            return False

    def _erase(self) -> None:
        out = self._out()
        try:
            out.write("\x1b[1A\x1b[2K" * self.drawn + "\r")
            out.flush()
        except (OSError, ValueError):
            pass
        self.drawn = 0

    def _draw(self, force: bool) -> None:
        now = time.monotonic()
        out = self._out()
        if self._tty():
            if not force and now - self.last_draw < REDRAW_S:
                return
            self.last_draw = now
            lines = [_render(name, bar, now) for name, bar in self.bars.items()]
            try:
                out.write(("\x1b[1A\x1b[2K" * self.drawn) + "\r" + "\n".join(lines) + "\n")
                out.flush()
            except (OSError, ValueError):
                return
            self.drawn = len(lines)
            return
        self._lines(now)                             # not a terminal: occasional lines

    def _lines(self, now: float, quiet: bool = False, final: bool = False) -> None:
        """A line for each bar that moved since its last: every LINE_EVERY_S,
        and its last one once all its parts are closed and it has been quiet
        for QUIET_S (the ticker), or at the end."""
        out = self._out()
        for name, bar in self.bars.items():
            count, total, closed = bar.totals()
            if bar.said == (count, total):
                continue
            due = final or now - bar.last_line >= LINE_EVERY_S or (
                quiet and closed and now - bar.last_report >= QUIET_S)
            if not due:
                continue
            bar.last_line = now
            bar.said = (count, total)
            try:
                out.write(_render(name, bar, now) + "\n")
                out.flush()
            except (OSError, ValueError):
                return


def _render(name: str, bar: _Bar, now: float) -> str:
    count, total, closed = bar.totals()
    elapsed = max(1e-9, (bar.last_report if closed else now) - bar.started)
    rate = count / elapsed
    if total:
        frac = min(1.0, count / total)
        filled = int(frac * WIDTH)
        return (f"{name}: {frac * 100:3.0f}%|{'█' * filled}{' ' * (WIDTH - filled)}| "
                f"{count:g}/{total:g} [{elapsed:.0f}s, {rate:.1f} {bar.unit}/s]")
    return f"{name}: {count:g} {bar.unit} [{elapsed:.0f}s, {rate:.1f} {bar.unit}/s]"


_progress = None


def driver_progress() -> Progress:
    """The one Progress of this (driver) process."""
    global _progress
    if _progress is None:
        _progress = Progress()
    return _progress
