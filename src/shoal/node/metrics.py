"""The node's table of user metrics (shoal.util.metrics): what its
processes reported, summed (counters, histograms) or latest (gauges), per
metric and tag set. Plain data, no I/O; owned by the node, touched under
``node.lock``. The agent's heartbeat carries ``rows()`` to the head.

A metric's kind, description and histogram boundaries are fixed by the
first report of its name; a later report that disagrees is refused, and
the refusal is kept (``refused``) so the exporter can say why a metric is
missing instead of mixing two meanings under one name.
"""
from __future__ import annotations

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
MAX_SERIES = 10_000          # tag sets per node; past it new series are refused


class MetricTable:
    def __init__(self):
        self.meta: dict = {}         # name -> (kind, description, boundaries)
        self.values: dict = {}       # (name, tags) -> value (float, or [counts, sum, count])
        self.refused: dict = {}      # name -> why its last update was refused

    def record(self, updates: list) -> None:
        for name, tags, kind, description, boundaries, value in updates:
            meta = self.meta.get(name)
            if meta is None:
                meta = self.meta[name] = (kind, description, boundaries)
            elif meta[0] != kind or (kind == HISTOGRAM and meta[2] != boundaries):
                self.refused[name] = (f"reported as a {kind} with boundaries {boundaries}, but "
                                      f"first as a {meta[0]} with boundaries {meta[2]}"
                                      if kind == HISTOGRAM or meta[0] == HISTOGRAM else
                                      f"reported as a {kind}, but first as a {meta[0]}")
                continue
            key = (name, tuple(tags))
            old = self.values.get(key)
            if old is None and len(self.values) >= MAX_SERIES:
                self.refused[name] = f"more than {MAX_SERIES} tag sets on one node"
                continue
            if kind == GAUGE:
                self.values[key] = value
            elif kind == COUNTER:
                self.values[key] = (old or 0.0) + value
            elif old is None:
                self.values[key] = [list(value[0]), value[1], value[2]]
            else:
                old[0] = [a + b for a, b in zip(old[0], value[0])]
                old[1] += value[1]
                old[2] += value[2]

    def rows(self) -> list:
        """[(name, kind, description, boundaries, tags, value)] for export."""
        out = []
        for (name, tags), value in self.values.items():
            kind, description, boundaries = self.meta[name]
            out.append((name, kind, description, boundaries, tags,
                        value if kind != HISTOGRAM else [list(value[0]), value[1], value[2]]))
        return out
