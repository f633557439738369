"""shoal.train on a cluster of two nodes (real head and node agent
processes on loopback, tests/cluster/conftest.py): elastic sizing counts
the workers that fit on each node, not in the cluster-wide sum, and
workers spread over nodes know their node and local ranks.

The loops run in the node agents' workers, which cannot import this
module: its functions travel by value."""
from __future__ import annotations

import sys
import threading

import cloudpickle
import pytest

import shoal
import shoal.train
from shoal.cluster import launch
from shoal.train import DataParallelTrainer, RunConfig, ScalingConfig
from shoal.util.placement_group import placement_group, remove_placement_group
from shoal.util.state import list_nodes

from ..cluster.conftest import cluster_env  # noqa: F401  (a fixture)
from ..conftest import wait_for

cloudpickle.register_pickle_by_value(sys.modules[__name__])

FIT_DEADLINE_S = 90


@pytest.fixture
def two_nodes(cluster_env):  # noqa: F811
    """A head node and a node "b", 2 CPUs each (and a marker resource,
    ``at_head`` / ``at_b``), linked, with this process as their driver."""
    head = launch.start_head("127.0.0.1", 0, num_cpus=2, resources={"at_head": 1})
    launch.start_node(head["address"], num_cpus=2, resources={"at_b": 1})
    shoal.init(address="auto")
    try:
        wait_for(lambda: len(_cpus_free()) == 2, timeout=30, what="both nodes in the view")
        # each node sends the other a task: they know and reach each other
        pairs = [hop.options(resources={f"at_{a}": 0.01}).remote(f"at_{b}")
                 for a, b in (("head", "b"), ("b", "head"))]
        assert shoal.get(pairs, timeout=60) == [True, True]
        yield
    finally:
        shoal.shutdown()


@shoal.remote(num_cpus=0)
def hop(to: str) -> bool:
    return shoal.get(on.options(resources={to: 0.01}).remote())


@shoal.remote(num_cpus=0)
def on() -> bool:
    return True


def _cpus_free() -> list:
    return sorted(n["resources_available"].get("CPU", 0.0) for n in list_nodes()
                  if n["state"] == "ALIVE" and not n["is_driver_node"])


def fit_within(trainer, seconds: float):
    """``trainer.fit()`` in a thread; its result, or a failure naming the hang."""
    out = {}

    def run():
        try:
            out["result"] = trainer.fit()
        except BaseException as e:     # handed to the test below
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"fit() did not return within {seconds} s (a group that cannot " \
                             f"be placed?)"
    if "error" in out:
        raise out["error"]
    return out["result"]


def report_ranks():
    ctx = shoal.train.get_context()
    shoal.train.report({"world": ctx.get_world_size(), "node": shoal.get_runtime_context()
                        .get_node_id()})


@pytest.mark.heavy
@pytest.mark.timeout(150)
def test_elastic_size_counts_what_fits_on_one_node_not_the_cluster_sum(two_nodes, tmp_path):
    # one CPU taken on each node: 2 free in all, but STRICT_PACK needs its
    # workers on one node, where only 1 fits
    hogs = [placement_group([{"CPU": 1, f"at_{name}": 0.01}]) for name in ("head", "b")]
    assert all(pg.wait(30) for pg in hogs)
    wait_for(lambda: _cpus_free() == [1.0, 1.0], timeout=30, what="the view to show 1+1 CPUs")
    wait_for(lambda: shoal.available_resources()["CPU"] == 2.0, timeout=30,
             what="the cluster-wide sum to show 2 CPUs")
    trainer = DataParallelTrainer(
        report_ranks, scaling_config=ScalingConfig(num_workers=(1, 2),
                                                   placement_strategy="STRICT_PACK"),
        run_config=RunConfig(name="pack", storage_path=str(tmp_path)))
    result = fit_within(trainer, FIT_DEADLINE_S)
    assert result.world_sizes == [1] and result.metrics["world"] == 1
    for pg in hogs:
        remove_placement_group(pg)


@shoal.remote(num_cpus=0)
class Notes:
    def __init__(self):
        self.notes = {}

    def note(self, key, value):
        self.notes[key] = value

    def all(self):
        return self.notes


@pytest.mark.heavy
@pytest.mark.timeout(150)
def test_workers_spread_over_nodes_have_node_and_local_ranks(two_nodes, tmp_path):
    notes = Notes.remote()

    def loop():
        ctx = shoal.train.get_context()
        shoal.get(notes.note.remote(ctx.get_world_rank(), (
            ctx.get_world_size(), ctx.get_local_rank(), ctx.get_local_world_size(),
            ctx.get_node_rank(), shoal.get_runtime_context().get_node_id())))
        shoal.train.report({})

    trainer = DataParallelTrainer(
        loop, scaling_config=ScalingConfig(num_workers=4, placement_strategy="SPREAD"),
        run_config=RunConfig(name="spread", storage_path=str(tmp_path)))
    fit_within(trainer, FIT_DEADLINE_S)
    ranks = shoal.get(notes.all.remote())
    assert sorted(ranks) == [0, 1, 2, 3]
    nodes = list(dict.fromkeys(ranks[r][4] for r in range(4)))     # in order of first rank
    assert len(nodes) == 2
    for rank, (world, local, local_world, node_rank, node) in ranks.items():
        same_node = [r for r in range(4) if ranks[r][4] == node]
        assert (world, local_world, node_rank) == (4, 2, nodes.index(node))
        assert local == same_node.index(rank)
