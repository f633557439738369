"""User metrics (shoal.util.metrics) from the driver, tasks and actors,
summed by the node (node/metrics.py) and shown in list_nodes() and the
Prometheus text (dashboard/prometheus.py); bad input refused clearly."""
from __future__ import annotations

import pytest

import shoal
from shoal.util import state
from shoal.util.metrics import Counter, Gauge, Histogram
from tests.conftest import wait_for


def node_metrics() -> dict:
    (node,) = state.list_nodes()
    return {(name, tags): (kind, value) for name, kind, _, _, tags, value in
            node["stats"]["metrics"]}, node


@shoal.remote
def count_items(n, kind):
    from shoal.util.metrics import Counter, Histogram
    items = Counter("items", "items seen", tag_keys=("kind",))
    sizes = Histogram("item_size", "sizes", boundaries=[1, 10, 100])
    for i in range(n):
        items.inc(tags={"kind": kind})
        sizes.observe(i * 7)
    return n


@shoal.remote
class Depth:
    def set(self, v):
        from shoal.util.metrics import Gauge
        Gauge("depth", "queue depth", tag_keys=("queue",)).set(v, tags={"queue": "main"})


def test_counters_gauges_and_histograms_from_everywhere(shoal_cluster):
    shoal.get([count_items.remote(5, "a"), count_items.remote(3, "b"),
               count_items.remote(2, "a")])
    d = Depth.remote()
    shoal.get(d.set.remote(4))
    shoal.get(d.set.remote(9))
    Counter("driver_calls", "calls from the driver").inc(2.5)

    def all_there():
        values, _ = node_metrics()
        return (values.get(("items", (("kind", "a"),))) == ("counter", 7.0)
                and values.get(("depth", (("queue", "main"),))) == ("gauge", 9.0)
                and values.get(("driver_calls", ())) == ("counter", 2.5)) and values
    values = wait_for(all_there, timeout=30, what="every metric at the node")
    assert values[("items", (("kind", "b"),))] == ("counter", 3.0)
    kind, (counts, total, count) = values[("item_size", ())]
    # 10 observations (0, 7, 14, ...): three zeros are <= 1
    assert kind == "histogram" and count == 10 and counts[0] == 3 and sum(counts) == 10
    assert total == sum(i * 7 for i in range(5)) + sum(i * 7 for i in range(3)) + \
        sum(i * 7 for i in range(2))


def test_prometheus_text_of_the_node(shoal_cluster):
    pytest.importorskip("prometheus_client", reason="the dashboard extra is not installed")
    from shoal.dashboard import prometheus
    shoal.get(count_items.remote(4, "z"))
    wait_for(lambda: ("items", (("kind", "z"),)) in node_metrics()[0], timeout=30,
             what="the metric at the node")
    _, node = node_metrics()
    text = prometheus.render(state.list_nodes()).decode()
    assert f'shoal_items_total{{NodeId="{node["node_id"]}",kind="z"}} 4.0' in text
    assert f'shoal_item_size_bucket{{NodeId="{node["node_id"]}",le="+Inf"}} 4.0' in text
    assert "shoal_node_workers{" in text and 'shoal_cluster_resources_total{resource="CPU"} 2.0' \
        in text


def test_a_name_reported_as_two_kinds_is_refused_and_said(shoal_cluster):
    Counter("twice", "first a counter").inc()
    Gauge("twice", "then a gauge").set(3)
    _, node = node_metrics()
    assert "first as a counter" in node["stats"]["metrics_refused"]["twice"]
    values, _ = node_metrics()
    assert values[("twice", ())] == ("counter", 1.0)


def test_bad_metrics_say_what_is_wrong():
    with pytest.raises(ValueError, match="metric name"):
        Counter("9lives")
    with pytest.raises(ValueError, match="metric name"):
        Gauge("has space")
    with pytest.raises(ValueError, match="tag keys"):
        Counter("ok", tag_keys=("bad key",))
    c = Counter("requests", tag_keys=("route",))
    with pytest.raises(ValueError, match="only goes up"):
        c.inc(-1, tags={"route": "/"})
    with pytest.raises(ValueError, match="missing tag value"):
        c.inc()
    with pytest.raises(ValueError, match="unknown tag"):
        c.inc(tags={"route": "/", "colour": "red"})
    with pytest.raises(TypeError, match="number"):
        Gauge("g").set("high")
    with pytest.raises(ValueError, match="boundaries"):
        Histogram("h")
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram("h", boundaries=[5, 1])
    assert c.set_default_tags({"route": "/home"}) is c       # then tags may be left out
