import math

import pytest

from shoplens.pipelines.ingest.ray_adapter import ClusterError, plan_pools


@pytest.mark.parametrize("cpus", [1, 2, 4, 16, 64])
def test_cpu_plans_fit_the_cluster_and_give_the_model_its_cores(cpus):
    plan = plan_pools([cpus], 0, "auto")
    reserved = plan.decode.size * plan.decode.num_cpus + plan.embed.size * plan.embed.num_cpus
    assert math.isclose(reserved, cpus)  # every core used, none promised twice
    assert plan.embed.num_gpus == 0
    assert plan.embed.size * plan.embed.threads >= cpus - plan.decode.size * plan.decode.num_cpus


def test_two_cores_one_model_actor_with_two_threads():
    plan = plan_pools([2], 0, "auto")
    assert (plan.embed.size, plan.embed.threads, plan.decode.num_cpus) == (1, 2, 0.5)


def test_gpu_plan_one_embed_actor_per_gpu_and_the_other_cores_decode():
    plan = plan_pools([16], 1, "auto")
    assert (plan.embed.size, plan.embed.num_gpus, plan.embed.num_cpus) == (1, 1, 1)
    assert plan.decode.size * plan.decode.num_cpus == 15


def test_cpu_device_ignores_gpus():
    assert plan_pools([16], 2, "cpu").embed.num_gpus == 0


def test_cuda_on_a_cluster_without_gpus_is_a_configuration_error():
    with pytest.raises(ClusterError, match="no GPU"):
        plan_pools([2], 0, "cuda")


@pytest.mark.parametrize("nodes", [[2, 2], [1, 1, 1], [16] * 8, [4, 32]])
def test_multi_node_plans_give_each_model_actor_a_node_it_fits_on(nodes):
    plan = plan_pools(nodes, 0, "auto")
    assert plan.embed.num_cpus <= max(nodes)
    assert plan.embed.size * plan.embed.num_cpus + plan.decode.size * plan.decode.num_cpus <= sum(nodes)
