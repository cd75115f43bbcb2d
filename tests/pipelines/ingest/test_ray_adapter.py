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


def test_gpu_plan_one_embed_actor_per_gpu_fed_by_four_cores_and_the_other_cores_decode():
    plan = plan_pools([16], 1, "auto")
    assert (plan.embed.size, plan.embed.num_gpus, plan.embed.num_cpus, plan.embed.start) == (1, 1, 4, 1)
    assert plan.decode.size * plan.decode.num_cpus == 12
    assert plan.embed.device == "cuda" and plan_pools([16], 0, "auto").embed.device == "cpu"


@pytest.mark.parametrize(("cpus", "gpus", "feed"), [(16, 1, 4), (96, 8, 4), (16, 8, 1), (4, 1, 2)])
def test_gpu_actors_fit_beside_the_decoders(cpus, gpus, feed):
    plan = plan_pools([cpus], gpus, "auto")
    assert (plan.embed.size, plan.embed.start, plan.embed.num_cpus) == (gpus, gpus, feed)  # all start at once
    assert plan.embed.size * plan.embed.num_cpus + plan.decode.size * plan.decode.num_cpus <= cpus


def test_gpus_the_autoscaler_may_start_are_planned_before_they_are_alive():
    """The shipped cluster's GPU workers start at zero: the GPU actors' requests are what starts them."""
    plan = plan_pools([8], 0, "auto", gpu_capacity=4)
    assert (plan.embed.size, plan.embed.num_gpus, plan.embed.start, plan.embed.device) == (4, 1, 1, "cuda")
    assert plan_pools([8], 0, "cuda", gpu_capacity=4).embed.num_gpus == 1  # no longer a cluster error
    assert plan_pools([8], 0, "cpu", gpu_capacity=4).embed.num_gpus == 0


def test_cpu_device_ignores_gpus():
    assert plan_pools([16], 2, "cpu").embed.num_gpus == 0


def test_cuda_on_a_cluster_without_gpus_is_a_configuration_error():
    with pytest.raises(ClusterError, match="no GPU"):
        plan_pools([2], 0, "cuda")
    with pytest.raises(ClusterError, match="none configured"):
        plan_pools([2], 0, "cuda", gpu_capacity=0)


def test_the_shipped_cluster_configs_gpu_capacity_is_what_ray_reports_for_it():
    """Ray's own reading of an autoscaler configuration (the private call the planner makes) on
    `ray_cluster.yaml`'s node types: four GPU workers of one GPU each."""
    from pathlib import Path

    import yaml
    from ray._private.state import GlobalState
    from ray.core.generated import autoscaler_pb2

    config = yaml.safe_load((Path(__file__).parents[3] / "ray_cluster.yaml").read_text())
    cluster = autoscaler_pb2.ClusterConfig()
    for name, node in config["available_node_types"].items():
        group = cluster.node_group_configs.add(name=name, max_count=node.get("max_workers", 1))
        group.resources.update({k: int(v) for k, v in node["resources"].items()})
    assert GlobalState._calculate_max_resource_from_cluster_config(cluster, "GPU") == 4


@pytest.mark.parametrize("nodes", [[2, 2], [1, 1, 1], [16] * 8, [4, 32]])
def test_multi_node_plans_give_each_model_actor_a_node_it_fits_on(nodes):
    plan = plan_pools(nodes, 0, "auto")
    assert plan.embed.num_cpus <= max(nodes)
    assert plan.embed.size * plan.embed.num_cpus + plan.decode.size * plan.decode.num_cpus <= sum(nodes)


def test_a_local_ray_has_no_configured_capacity_beyond_its_live_resources(ray_session, caplog):
    from shoplens.pipelines.ingest.ray_adapter import cluster_resources

    node_cpus, gpus, capacity = cluster_resources()
    assert node_cpus == [2.0] and gpus == capacity == 0
    assert "could not read the cluster's configured resources" not in caplog.text  # Ray's private call is where it was
