"""Your own metrics, with Ray's ``ray.util.metrics`` names, exported by the
cluster's Prometheus endpoint (the dashboard's ``/metrics``) from whichever
process records them.

    from shoal.util.metrics import Counter, Gauge, Histogram
    requests = Counter("requests", "requests served", tag_keys=("route",))
    requests.inc(tags={"route": "/predict"})
    latency = Histogram("latency_s", "time per request", boundaries=[0.01, 0.1, 1])
    latency.observe(0.042)

Each process keeps what changed since it last reported (counter and
histogram increments, a gauge's latest value) and hands it to its node
when a task ends, or at most ``metrics_report_interval_s`` after an update
while one runs; a driver reports at once. The node sums increments and
keeps each gauge's latest value per tag set; its heartbeat carries them to
the head, and the endpoint exports them per node (label ``NodeId``) with
the prefix ``shoal_``.
"""
from __future__ import annotations

import re
import threading
import time

from .. import config

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"


class _Pending:
    """This process's changes not yet handed to its node, for every metric
    (one lock: metrics may be updated from any thread)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.changes: dict = {}       # (name, tags) -> [kind, description, boundaries, value]
        self.first_change = 0.0
        self.interval = None
        # a one-shot timer that reports what a still-running task recorded;
        # it exits after firing (daemon: a process exiting does not wait for it)
        self.timer: threading.Timer | None = None

    def add(self, metric, tags: tuple, kind: str, value) -> None:
        key = (metric._name, tags)
        with self.lock:
            entry = self.changes.get(key)
            if entry is None:
                if not self.changes:
                    self.first_change = time.monotonic()
                entry = self.changes[key] = [kind, metric._description,
                                             getattr(metric, "_boundaries", None), None]
            if kind == COUNTER:
                entry[3] = (entry[3] or 0.0) + value
            elif kind == GAUGE:
                entry[3] = value
            else:                        # histogram: per-bucket counts, sum, count
                counts = entry[3] or [[0] * (len(entry[2]) + 1), 0.0, 0]
                counts[0][_bucket(entry[2], value)] += 1
                counts[1] += value
                counts[2] += 1
                entry[3] = counts
        self._maybe_report()

    def _maybe_report(self) -> None:
        from ..core import current_core
        core = current_core()
        if core is None:
            return
        if self.interval is None:
            self.interval = config.get("metrics_report_interval_s")
        waited = time.monotonic() - self.first_change
        if core.is_driver or waited >= self.interval:
            report(core)
            return
        with self.lock:
            if self.timer is None:
                self.timer = threading.Timer(self.interval - waited, self._on_timer)
                self.timer.daemon = True
                self.timer.start()

    def _on_timer(self) -> None:
        with self.lock:
            self.timer = None
        try:
            report()
        except Exception:     # the connection to the node is gone: the process is ending
            pass

    def take(self) -> list:
        with self.lock:
            changes, self.changes = self.changes, {}
        return [(name, tags, kind, description, boundaries, value)
                for (name, tags), (kind, description, boundaries, value) in changes.items()]


_pending = _Pending()


def report(core=None) -> None:
    """Hand this process's metric changes to its node now (the worker loop
    calls this after each task; a driver's updates report themselves)."""
    if not _pending.changes:
        return
    if core is None:
        from ..core import current_core
        core = current_core()
        if core is None:
            return
    updates = _pending.take()
    if updates:
        core.send_metrics(updates)


def _bucket(boundaries: list, value: float) -> int:
    for i, b in enumerate(boundaries):
        if value <= b:
            return i
    return len(boundaries)


class Metric:
    _kind = ""

    def __init__(self, name: str, description: str = "", tag_keys: tuple | None = None):
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"a metric name is letters, digits, '_' and ':', not starting "
                             f"with a digit; got {name!r}")
        if not isinstance(description, str):
            raise TypeError(f"description must be a string, got {type(description).__name__}")
        tag_keys = tuple(tag_keys or ())
        for key in tag_keys:
            if not isinstance(key, str) or not _NAME.match(key):
                raise ValueError(f"tag keys are names like metric names; got {key!r}")
        if len(set(tag_keys)) != len(tag_keys):
            raise ValueError(f"tag_keys has duplicates: {tag_keys}")
        self._name = name
        self._description = description
        self._tag_keys = tag_keys
        self._default_tags: dict = {}

    def set_default_tags(self, default_tags: dict) -> "Metric":
        """Tags used when a call does not give them (Ray's API)."""
        self._check_keys(default_tags)
        self._default_tags = dict(default_tags)
        return self

    def _check_keys(self, tags: dict) -> None:
        if not isinstance(tags, dict):
            raise TypeError(f"tags must be a dict, got {type(tags).__name__}")
        unknown = set(tags) - set(self._tag_keys)
        if unknown:
            raise ValueError(f"metric {self._name!r}: unknown tag(s) {sorted(unknown)}; its "
                             f"tag_keys are {list(self._tag_keys)}")

    def _tags(self, tags: dict | None) -> tuple:
        merged = dict(self._default_tags)
        if tags:
            self._check_keys(tags)
            merged.update(tags)
        missing = [k for k in self._tag_keys if k not in merged]
        if missing:
            raise ValueError(f"metric {self._name!r}: missing tag value(s) for {missing} "
                             f"(give tags= or set_default_tags)")
        return tuple((k, str(merged[k])) for k in self._tag_keys)

    @property
    def info(self) -> dict:
        return {"name": self._name, "description": self._description,
                "tag_keys": self._tag_keys, "default_tags": self._default_tags}


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, got {value!r}")
    return float(value)


class Counter(Metric):
    """A count that only goes up; ``inc(value=1.0, tags=None)``."""
    _kind = COUNTER

    def inc(self, value: float = 1.0, tags: dict | None = None) -> None:
        value = _number(value, "a counter's increment")
        if value < 0:
            raise ValueError(f"counter {self._name!r} only goes up; inc({value}) is negative")
        _pending.add(self, self._tags(tags), COUNTER, value)


class Gauge(Metric):
    """A value that goes up and down; ``set(value, tags=None)``."""
    _kind = GAUGE

    def set(self, value: float, tags: dict | None = None) -> None:
        _pending.add(self, self._tags(tags), GAUGE, _number(value, "a gauge's value"))


class Histogram(Metric):
    """Observations counted into buckets with upper ``boundaries``;
    ``observe(value, tags=None)``."""
    _kind = HISTOGRAM

    def __init__(self, name: str, description: str = "", boundaries: list | None = None,
                 tag_keys: tuple | None = None):
        super().__init__(name, description, tag_keys)
        if not boundaries:
            raise ValueError(f"histogram {name!r} needs boundaries, e.g. [0.01, 0.1, 1]")
        bounds = [_number(b, "a boundary") for b in boundaries]
        if any(b <= 0 for b in bounds) or bounds != sorted(set(bounds)):
            raise ValueError(f"histogram {name!r}: boundaries must be positive and strictly "
                             f"increasing, got {list(boundaries)}")
        self._boundaries = bounds

    def observe(self, value: float, tags: dict | None = None) -> None:
        _pending.add(self, self._tags(tags), HISTOGRAM, _number(value, "an observation"))


__all__ = ["Counter", "Gauge", "Histogram"]
