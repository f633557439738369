"""User metrics (shoal.util.metrics) from the driver, tasks and actors,
summed by the node (node/metrics.py) and shown in list_nodes() and the
Prometheus text (dashboard/prometheus.py); bad input refused clearly."""
from __future__ import annotations

import pytest

import shoal
from shoal.util import state
from shoal.util.metrics import Counter, Gauge, Histogram
from tests.conftest import touch, wait_for, wait_for_file


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


@shoal.remote
def set_then_hold(gate):
    from shoal.util.metrics import Gauge
    Gauge("progress", "how far the long task is").set(3)
    return wait_for_file(gate)


def test_a_running_task_reports_its_last_update_without_a_new_one(shoal_cluster, tmp_path):
    """One update, then the task goes on for long: the node gets it within
    metrics_report_interval_s, not only when the task ends."""
    gate = str(tmp_path / "gate")
    running = set_then_hold.remote(gate)
    wait_for(lambda: node_metrics()[0].get(("progress", ())) == ("gauge", 3.0), timeout=30,
             what="the running task's gauge at the node")
    assert not shoal.wait([running], timeout=0)[0]          # it is still running
    touch(gate)
    assert shoal.get(running, timeout=30)


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


def test_nodes_reporting_one_name_as_different_metrics_do_not_break_the_page():
    """A counter on one node and a histogram of the same name on another (or
    other boundaries, or other tag keys): the first node's series is kept,
    the others are counted in shoal_metric_conflicts."""
    pytest.importorskip("prometheus_client", reason="the dashboard extra is not installed")
    from shoal.dashboard import prometheus

    def node(nid, metrics):
        return {"node_id": nid, "state": "ALIVE", "resources_total": {"CPU": 1.0},
                "resources_available": {"CPU": 1.0}, "stats": {"metrics": metrics}}
    rows = [node("a", [("x", "counter", "", None, (), 2.0),
                       ("h", "histogram", "", [1, 10], (), [[1, 1, 0], 5.5, 2])]),
            node("b", [("x", "histogram", "", [1], (), [[1, 0], 0.5, 1]),
                       ("h", "histogram", "", [1, 100], (), [[1, 0, 0], 0.5, 1])]),
            node("c", [("x", "counter", "", None, (("k", "v"),), 1.0)])]
    text = prometheus.render(rows).decode()
    assert 'shoal_x_total{NodeId="a"} 2.0' in text
    assert 'shoal_h_bucket{NodeId="a",le="10.0"} 2.0' in text
    series = [line for line in text.splitlines() if line.startswith(("shoal_x", "shoal_h"))]
    assert series and all('NodeId="a"' in line for line in series)
    for name, nid in (("x", "b"), ("h", "b"), ("x", "c")):
        assert f'shoal_metric_conflicts{{NodeId="{nid}",metric="{name}"}} 1.0' in text
