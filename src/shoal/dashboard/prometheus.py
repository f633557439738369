"""The cluster's Prometheus metrics, from the state API's node rows (each
node's last heartbeat: resources, task counts, object store, workers, and
the user metrics of shoal.util.metrics its processes reported).

Every series has the prefix ``shoal_``; node series carry ``NodeId``.
Rendered with prometheus-client's text format (the ``dashboard`` extra).
"""
from __future__ import annotations

from prometheus_client.core import (CollectorRegistry, CounterMetricFamily,
                                    GaugeMetricFamily, HistogramMetricFamily)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST


def render(nodes: list[dict]) -> bytes:
    """The text exposition of ``list_nodes()`` rows."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(nodes))
    return generate_latest(registry)


class _Collector:
    def __init__(self, nodes: list[dict]):
        self.nodes = nodes

    def collect(self):
        alive = [n for n in self.nodes if n["state"] == "ALIVE"]
        yield _gauge("shoal_cluster_nodes", "nodes by state", ["state"],
                     [((s,), sum(n["state"] == s for n in self.nodes))
                      for s in ("ALIVE", "DEAD")])
        total, used = {}, {}
        for n in alive:
            for k, v in n["resources_total"].items():
                total[k] = total.get(k, 0) + v
                used[k] = used.get(k, 0) + max(0.0, v - n["resources_available"].get(k, v))
        yield _gauge("shoal_cluster_resources_total", "resources in the cluster",
                     ["resource"], [((k,), v) for k, v in sorted(total.items())])
        yield _gauge("shoal_cluster_resources_used", "resources in use in the cluster",
                     ["resource"], [((k,), v) for k, v in sorted(used.items())])
        yield _gauge("shoal_node_resources_total", "a node's resources",
                     ["NodeId", "resource"],
                     [((n["node_id"], k), v) for n in alive
                      for k, v in sorted(n["resources_total"].items())])
        yield _gauge("shoal_node_resources_used", "a node's resources in use",
                     ["NodeId", "resource"],
                     [((n["node_id"], k), max(0.0, v - n["resources_available"].get(k, v)))
                      for n in alive for k, v in sorted(n["resources_total"].items())])
        stats = [(n["node_id"], n.get("stats") or {}) for n in alive]
        yield _gauge("shoal_node_tasks", "a node's tasks by state", ["NodeId", "state"],
                     [((nid, state), count) for nid, s in stats
                      for state, count in (s.get("tasks") or {}).items()
                      if state in ("waiting", "queued", "running")])
        ended = CounterMetricFamily("shoal_node_tasks_ended", "tasks a node has ended",
                                    labels=["NodeId", "outcome"])
        for nid, s in stats:
            t = s.get("tasks") or {}
            if t:
                ended.add_metric([nid, "finished"], t.get("ended", 0) - t.get("failed", 0))
                ended.add_metric([nid, "failed"], t.get("failed", 0))
        yield ended
        for key, name, doc in (("object_store_used", "shoal_node_object_store_used_bytes",
                                "bytes of objects in a node's shared memory"),
                               ("object_store_capacity", "shoal_node_object_store_capacity_bytes",
                                "a node's shared-memory store size"),
                               ("spilled_bytes", "shoal_node_spilled_bytes",
                                "bytes of a node's objects spilled to disk now"),
                               ("workers", "shoal_node_workers", "a node's worker processes")):
            yield _gauge(name, doc, ["NodeId"],
                         [((nid,), s[key]) for nid, s in stats if key in s])
        yield from _user_metrics(stats)


def _gauge(name: str, doc: str, labels: list, samples: list) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, v in samples:
        family.add_metric(list(values), v)
    return family


def _user_metrics(stats: list):
    """One family per user metric name, as the first node reporting it made
    it; a node whose metric of that name has another kind, other histogram
    boundaries or other tag keys is left out of it and counted in
    shoal_metric_conflicts (name and node), not allowed to break the page."""
    families: dict = {}
    conflicts: list = []
    for nid, s in stats:
        for name, kind, description, boundaries, tags, value in s.get("metrics") or ():
            keys = ["NodeId"] + [k for k, _ in tags]
            family = families.get(name)
            if family is None:
                full = "shoal_" + name
                cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
                       "histogram": HistogramMetricFamily}[kind]
                family = families[name] = (cls(full, description or name, labels=keys), kind,
                                           boundaries)
            fam, first_kind, bounds = family
            labels = [nid] + [v for _, v in tags]
            if kind != first_kind or len(labels) != len(fam._labelnames) or \
                    (kind == "histogram" and list(boundaries or ()) != list(bounds or ())):
                conflicts.append((name, nid))
                continue
            if kind == "histogram":
                counts, total, _ = value
                running, buckets = 0, []
                for bound, c in zip(list(bounds) + [float("inf")], counts):
                    running += c
                    buckets.append((_le(bound), running))
                fam.add_metric(labels, buckets, total)
            else:
                fam.add_metric(labels, value)
    for fam, _, _ in families.values():
        yield fam
    if conflicts:
        counted: dict = {}
        for key in conflicts:
            counted[key] = counted.get(key, 0) + 1
        yield _gauge("shoal_metric_conflicts",
                     "user metric series left out: another kind, boundaries or tag keys "
                     "than the first node's series of that name",
                     ["metric", "NodeId"], list(counted.items()))


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))
