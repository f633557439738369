"""Resources: CPUs, fractional GPUs and CUDA_VISIBLE_DEVICES, custom ones."""
from __future__ import annotations

import os

import pytest

import shoal
from shoal.exceptions import InfeasibleTaskError


@pytest.mark.cluster(num_cpus=2, num_gpus=2, resources={"edge": 1})
def test_cluster_and_available_resources(shoal_cluster):
    total = shoal.cluster_resources()
    assert total["CPU"] == 2 and total["GPU"] == 2 and total["edge"] == 1
    assert shoal.available_resources()["CPU"] == 2
    assert len(shoal.nodes()) == 1 and shoal.nodes()[0]["Alive"]


@pytest.mark.cluster(num_cpus=2, num_gpus=2)
def test_gpu_tasks_see_their_gpu_ids(shoal_cluster):
    @shoal.remote(num_gpus=1)
    def which():
        return shoal.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")

    ids, env = shoal.get(which.remote())
    assert len(ids) == 1 and env == str(ids[0])


@pytest.mark.cluster(num_cpus=4, num_gpus=1)
def test_fractional_gpus_share_one_device(shoal_cluster):
    @shoal.remote(num_gpus=0.5)
    class Half:
        def ids(self):
            return shoal.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")

    a, b = Half.remote(), Half.remote()
    (ids_a, env_a), (ids_b, env_b) = shoal.get([a.ids.remote(), b.ids.remote()])
    assert ids_a == ids_b == [0] and env_a == env_b == "0"
    assert shoal.available_resources().get("GPU", 0) == 0


@pytest.mark.cluster(num_cpus=2, resources={"edge": 1})
def test_custom_resources_limit_concurrency(shoal_cluster):
    @shoal.remote(resources={"edge": 1})
    def on_edge():
        return shoal.get_runtime_context().get_assigned_resources()

    assert shoal.get(on_edge.remote())["edge"] == 1


def test_infeasible_task_fails_with_the_numbers(shoal_cluster):
    @shoal.remote(num_cpus=64)
    def huge():
        return 1

    with pytest.raises(InfeasibleTaskError, match="CPU=64.*CPU=2"):
        shoal.get(huge.remote(), timeout=10)


def test_cpu_task_without_gpu_sees_no_gpu(shoal_cluster):
    @shoal.remote
    def ids():
        return shoal.get_gpu_ids()

    assert shoal.get(ids.remote()) == []
