"""Placement groups and scheduling strategies on one node."""
from __future__ import annotations

import os

import pytest

import shoal
from shoal.exceptions import (ActorDiedError, InfeasibleTaskError, TaskPlacementGroupRemoved,
                              TaskUnschedulableError)
from shoal.util import (get_current_placement_group, get_placement_group, placement_group,
                        placement_group_table, remove_placement_group)
from shoal.util.scheduling_strategies import (NodeAffinitySchedulingStrategy,
                                              PlacementGroupSchedulingStrategy)

from ..conftest import touch, wait_for, wait_for_file


def in_pg(pg, index=-1, capture=None):
    return PlacementGroupSchedulingStrategy(pg, index, capture)


@shoal.remote
def resources_seen():
    return (shoal.get_runtime_context().get_assigned_resources(), shoal.get_gpu_ids(),
            get_current_placement_group())


@shoal.remote
def wait_file(path):
    wait_for_file(path)
    return os.getpid()


@pytest.mark.parametrize("strategy", ["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"])
def test_each_strategy_places_on_one_node(shoal_cluster, strategy):
    bundles = [{"CPU": 1}] if strategy == "STRICT_SPREAD" else [{"CPU": 1}, {"CPU": 1}]
    pg = placement_group(bundles, strategy=strategy)
    assert shoal.get(pg.ready(), timeout=10) == pg
    assert pg.wait(5)
    assert shoal.available_resources().get("CPU", 0) == 2 - len(bundles)
    table = placement_group_table(pg)
    assert table["state"] == "CREATED" and table["strategy"] == strategy
    assert set(table["bundles_to_node_id"].values()) == {shoal.nodes()[0]["NodeID"]}
    remove_placement_group(pg)
    assert shoal.available_resources()["CPU"] == 2
    assert placement_group_table(pg)["state"] == "REMOVED"


def test_strict_spread_of_two_bundles_cannot_be_placed_on_one_node(shoal_cluster):
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    with pytest.raises(InfeasibleTaskError, match="different node"):
        pg.wait(5)
    assert shoal.available_resources()["CPU"] == 2     # nothing was reserved


def test_bundles_bigger_than_the_node_are_infeasible_with_the_numbers(shoal_cluster):
    pg = placement_group([{"CPU": 1}, {"CPU": 2}])
    with pytest.raises(InfeasibleTaskError, match=r"CPU: 3.*CPU: 2"):
        shoal.get(pg.ready(), timeout=5)


def test_reservation_is_all_or_nothing_and_waits_for_resources(shoal_cluster, tmp_path):
    release = str(tmp_path / "go")
    busy = wait_file.remote(release)                 # holds 1 of the 2 CPUs
    wait_for(lambda: shoal.available_resources().get("CPU", 0) == 1)
    pg = placement_group([{"CPU": 1}, {"CPU": 1}])
    assert not pg.wait(0.3)
    assert placement_group_table(pg)["state"] == "PENDING"
    # the free CPU was not taken by the half-placed group
    assert shoal.available_resources().get("CPU", 0) == 1
    touch(release)
    shoal.get(busy, timeout=30)
    assert pg.wait(10)
    assert shoal.available_resources().get("CPU", 0) == 0
    remove_placement_group(pg)


def test_tasks_use_the_bundle_not_the_node(shoal_cluster, tmp_path):
    pg = placement_group([{"CPU": 1}])
    pg.wait(10)
    release = str(tmp_path / "go")
    inside = [wait_file.options(scheduling_strategy=in_pg(pg, 0)).remote(release)
              for _ in range(2)]
    # the node's other CPU is free for ordinary work while the bundle is busy
    assert shoal.get(resources_seen.remote(), timeout=10)[2] is None
    assert shoal.available_resources().get("CPU", 0) == 1
    touch(release)
    assert len(shoal.get(inside, timeout=30)) == 2
    remove_placement_group(pg)


@pytest.mark.cluster(num_cpus=2, num_gpus=2)
def test_gpu_bundle_gives_its_device_to_tasks_in_it(shoal_cluster):
    pg = placement_group([{"CPU": 1, "GPU": 1}])
    pg.wait(10)
    assigned, gpus, current = shoal.get(
        resources_seen.options(num_gpus=1, scheduling_strategy=in_pg(pg, 0)).remote())
    assert assigned == {"CPU": 1.0, "GPU": 1.0} and current == pg
    _, outside, _ = shoal.get(resources_seen.options(num_gpus=1).remote())
    assert len(gpus) == 1 and len(outside) == 1 and gpus != outside
    remove_placement_group(pg)


@pytest.mark.cluster(num_cpus=2, num_gpus=1)
def test_fractional_gpu_bundle(shoal_cluster):
    pg = placement_group([{"GPU": 0.5, "CPU": 1}])
    pg.wait(10)
    _, gpus, _ = shoal.get(
        resources_seen.options(num_gpus=0.25, scheduling_strategy=in_pg(pg)).remote())
    assert gpus == [0]
    assert shoal.available_resources()["GPU"] == 0.5
    with pytest.raises(InfeasibleTaskError, match="does not fit"):
        shoal.get(resources_seen.options(num_gpus=1, scheduling_strategy=in_pg(pg)).remote())
    remove_placement_group(pg)


def test_request_larger_than_its_bundle_fails_clearly(shoal_cluster):
    pg = placement_group([{"CPU": 1}, {"CPU": 1}])
    pg.wait(10)
    with pytest.raises(InfeasibleTaskError, match=r"bundle 0 \(\{CPU: 1\}\)"):
        shoal.get(resources_seen.options(num_cpus=2, scheduling_strategy=in_pg(pg, 0)).remote())
    with pytest.raises(ValueError, match="out of range"):
        in_pg(pg, 2)
    with pytest.raises(ValueError, match=">= -1"):
        in_pg(pg, -2)
    remove_placement_group(pg)


def test_actor_in_a_bundle_and_removal_kills_it(shoal_cluster):
    @shoal.remote(num_cpus=1)
    class A:
        def where(self):
            return get_current_placement_group(), os.getpid()

    pg = placement_group([{"CPU": 1}])
    a = A.options(scheduling_strategy=in_pg(pg, 0)).remote()
    current, pid = shoal.get(a.where.remote(), timeout=20)
    assert current == pg
    assert shoal.available_resources().get("CPU", 0) == 1   # the actor's CPU is the bundle's
    remove_placement_group(pg)
    with pytest.raises(ActorDiedError, match="placement group"):
        shoal.get(a.where.remote(), timeout=20)
    wait_for(lambda: shoal.available_resources().get("CPU", 0) == 2)


def test_removing_kills_running_and_fails_queued_tasks(shoal_cluster, tmp_path):
    pg = placement_group([{"CPU": 1}])
    pg.wait(10)
    running = wait_file.options(scheduling_strategy=in_pg(pg)).remote(str(tmp_path / "never"))
    queued = resources_seen.options(scheduling_strategy=in_pg(pg)).remote()
    wait_for(lambda: shoal.available_resources().get("CPU", 0) == 1)
    remove_placement_group(pg)
    remove_placement_group(pg)          # twice is harmless
    for ref in (running, queued):
        with pytest.raises(TaskPlacementGroupRemoved, match="was removed"):
            shoal.get(ref, timeout=20)
    with pytest.raises(TaskPlacementGroupRemoved):
        shoal.get(resources_seen.options(scheduling_strategy=in_pg(pg)).remote(), timeout=10)
    wait_for(lambda: shoal.available_resources().get("CPU", 0) == 2)


def test_removing_a_pending_group_fails_its_ready_ref(shoal_cluster):
    pg = placement_group([{"CPU": 2}, {"CPU": 1}], strategy="PACK")
    ready = pg.ready()
    # infeasible on this node: its ready ref already carries the reason
    with pytest.raises(InfeasibleTaskError):
        shoal.get(ready, timeout=5)
    blocker = placement_group([{"CPU": 2}])
    blocker.wait(10)
    pending = placement_group([{"CPU": 1}])
    ready = pending.ready()
    assert not pending.wait(0.2)
    remove_placement_group(pending)
    with pytest.raises(TaskPlacementGroupRemoved, match="before it was placed"):
        shoal.get(ready, timeout=5)
    remove_placement_group(blocker)
    remove_placement_group(pg)


def test_capture_child_tasks(shoal_cluster):
    @shoal.remote(num_cpus=0)
    def child():
        return get_current_placement_group()

    @shoal.remote(num_cpus=1)
    def parent():
        return shoal.get(child.remote()), get_current_placement_group()

    pg = placement_group([{"CPU": 1}])
    captured, own = shoal.get(parent.options(scheduling_strategy=in_pg(pg, 0, True)).remote())
    assert captured == pg and own == pg
    not_captured, own = shoal.get(parent.options(scheduling_strategy=in_pg(pg, 0)).remote())
    assert not_captured is None and own == pg
    remove_placement_group(pg)


def test_capture_from_an_actor_in_a_group(shoal_cluster):
    @shoal.remote(num_cpus=0)
    def child():
        return get_current_placement_group()

    @shoal.remote(num_cpus=1)
    class Parent:
        def spawn(self):
            return shoal.get(child.remote())

    pg = placement_group([{"CPU": 1}, {"CPU": 1}])
    p = Parent.options(scheduling_strategy=in_pg(pg, 0, True)).remote()
    assert shoal.get(p.spawn.remote(), timeout=20) == pg
    remove_placement_group(pg)


def test_named_groups_and_the_table(shoal_cluster):
    pg = placement_group([{"CPU": 1}], name="trainers")
    pg.wait(10)
    assert get_placement_group("trainers") == pg
    with pytest.raises(ValueError, match="already exists"):
        placement_group([{"CPU": 1}], name="trainers")
    other = placement_group([{"CPU": 1}])
    table = placement_group_table()
    assert set(table) == {pg.id.hex(), other.id.hex()}
    assert table[pg.id.hex()]["name"] == "trainers"
    assert pg.bundle_specs == [{"CPU": 1.0}] and pg.bundle_count == 1
    remove_placement_group(pg)
    with pytest.raises(ValueError, match="no such group"):
        get_placement_group("trainers")
    placement_group([{"CPU": 1}], name="trainers")   # the name is free again
    remove_placement_group(other)


def test_group_handle_travels_to_tasks(shoal_cluster):
    @shoal.remote(num_cpus=0)
    def use(pg):
        return shoal.get(resources_seen.options(scheduling_strategy=in_pg(pg, 0)).remote())[2]

    pg = placement_group([{"CPU": 1}])
    assert shoal.get(use.remote(pg), timeout=20) == pg
    remove_placement_group(pg)


def test_legacy_placement_group_option(shoal_cluster):
    pg = placement_group([{"CPU": 1}])
    out = shoal.get(resources_seen.options(placement_group=pg,
                                           placement_group_bundle_index=0).remote())
    assert out[2] == pg
    with pytest.raises(ValueError, match="not both"):
        resources_seen.options(placement_group=pg, scheduling_strategy="SPREAD")
    remove_placement_group(pg)


def test_killed_worker_in_a_bundle_retries_in_it(shoal_cluster, tmp_path):
    marker = str(tmp_path / "first")

    @shoal.remote(max_retries=1)
    def die_once(path):
        if not os.path.exists(path):
            touch(path)
            os._exit(1)
        return get_current_placement_group()

    pg = placement_group([{"CPU": 1}])
    assert shoal.get(die_once.options(scheduling_strategy=in_pg(pg)).remote(marker),
                     timeout=30) == pg
    remove_placement_group(pg)


@pytest.mark.parametrize("bundles, match", [
    ([], "non-empty list"),
    ("CPU", "non-empty list"),
    ([{"CPU": -1}], "non-negative"),
    ([{}], "empty"),
    ([{"CPU": 0}], "empty"),
    ([{"GPU": 1.5}], "whole"),
    ([1], "must be a dict"),
])
def test_bad_bundles_are_refused(shoal_cluster, bundles, match):
    with pytest.raises(ValueError, match=match):
        placement_group(bundles)


def test_bad_arguments_are_refused(shoal_cluster):
    with pytest.raises(ValueError, match="strategy must be one of"):
        placement_group([{"CPU": 1}], strategy="TIGHT")
    with pytest.raises(ValueError, match="lifetime"):
        placement_group([{"CPU": 1}], lifetime="forever")
    with pytest.raises(TypeError, match="PlacementGroup"):
        PlacementGroupSchedulingStrategy("not a group")
    with pytest.raises(TypeError):
        remove_placement_group("not a group")
    with pytest.raises(ValueError, match="scheduling_strategy must be"):
        resources_seen.options(scheduling_strategy="NEAR")
    with pytest.raises(ValueError, match="scheduling_strategy must be"):
        resources_seen.options(scheduling_strategy=42)


def test_spread_and_node_affinity(shoal_cluster):
    here = shoal.get_runtime_context().get_node_id()
    assert shoal.get(resources_seen.options(scheduling_strategy="SPREAD").remote())[2] is None
    assert shoal.get(resources_seen.options(scheduling_strategy="DEFAULT").remote())[2] is None
    on_here = NodeAffinitySchedulingStrategy(here, soft=False)
    assert shoal.get(resources_seen.options(scheduling_strategy=on_here).remote())
    elsewhere = "ab" * 16
    soft = NodeAffinitySchedulingStrategy(elsewhere, soft=True)
    assert shoal.get(resources_seen.options(scheduling_strategy=soft).remote())
    hard = NodeAffinitySchedulingStrategy(elsewhere, soft=False)
    with pytest.raises(TaskUnschedulableError, match="does not exist or is dead"):
        shoal.get(resources_seen.options(scheduling_strategy=hard).remote())

    @shoal.remote
    class A:
        def ping(self):
            return 1

    a = A.options(scheduling_strategy=hard).remote()
    with pytest.raises(ActorDiedError, match="does not exist or is dead"):
        shoal.get(a.ping.remote(), timeout=10)
    with pytest.raises(ValueError, match="not a node id"):
        NodeAffinitySchedulingStrategy("zz", soft=False)


def test_many_groups_created_and_removed_leave_nothing(shoal_cluster):
    for _ in range(200):
        pg = placement_group([{"CPU": 0.5}, {"CPU": 0.5}])
        shoal.get(pg.ready(), timeout=10)
        remove_placement_group(pg)
    assert shoal.available_resources()["CPU"] == 2
