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


@pytest.mark.parametrize(("cpus", "gpus", "feed"), [(16, 1, 4), (96, 8, 4), (16, 8, 1), (4, 1, 2), (2, 2, 0.5)])
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


def test_the_shipped_cluster_configs_gpu_nodes_are_read_from_the_launchers_copy_on_the_head(tmp_path):
    """`ray up` leaves the config at ~/ray_bootstrap_config.yaml on the head: four GPU workers of
    16 cores and one GPU each, none alive when the job starts."""
    from pathlib import Path

    from shoplens.pipelines.ingest.ray_adapter import configured_gpu_nodes

    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    bootstrap.write_text((Path(__file__).parents[3] / "ray_cluster.yaml").read_text())
    assert configured_gpu_nodes(bootstrap) == [(16.0, 1.0, 4)]
    plan = plan_pools([8], 0, "auto", gpu_capacity=4, cpus_per_gpu=16)
    assert (plan.embed.size, plan.embed.num_cpus, plan.embed.start) == (4, 4, 1)
    assert plan.decode.size == 8 + 4 * 16 - 4 * 4  # the head's cores and the GPU nodes' to come, less what feeds the GPUs
    assert configured_gpu_nodes(tmp_path / "absent.yaml") == []
    bootstrap.write_text("available_node_types: [not, a, mapping]")
    assert configured_gpu_nodes(bootstrap) == []  # unreadable: planned from the live nodes, saying so


@pytest.mark.parametrize(
    ("node_cpus", "gpus", "cpus_per_gpu", "feed"), [([32, 2], 1, 2, 1), ([64, 8], 4, 2, 1), ([2], 2, 1, 0.5), ([16], 8, 2, 1)]
)
def test_gpu_actors_fit_on_their_own_nodes(node_cpus, gpus, cpus_per_gpu, feed):
    """The GPU node's cores per GPU bound each GPU actor's, whatever other nodes have."""
    plan = plan_pools(node_cpus, gpus, "auto", cpus_per_gpu=cpus_per_gpu)
    assert plan.embed.num_cpus == feed and plan.embed.num_cpus <= cpus_per_gpu / 2
    assert plan.embed.size * plan.embed.num_cpus + plan.decode.size * plan.decode.num_cpus <= sum(node_cpus)


def test_a_local_ray_plans_from_its_live_resources(ray_session, monkeypatch, tmp_path):
    from shoplens.pipelines.ingest.ray_adapter import plan_cluster

    monkeypatch.setenv("HOME", str(tmp_path))  # no launcher config here
    plan = plan_cluster("auto")
    assert (plan.embed.num_gpus, plan.embed.size, plan.embed.device) == (0, 1, "cpu")


@pytest.mark.parametrize(
    "text",
    [
        "available_node_types: {gpu: {max_workers: .inf, resources: {CPU: 4, GPU: 1}}}",
        "- a list",
        "",
        "available_node_types: {gpu: {max_workers: 2, resources: {GPU: .nan}}}",
    ],
)
def test_a_launcher_config_of_any_shape_never_raises(tmp_path, text):
    from shoplens.pipelines.ingest.ray_adapter import configured_gpu_nodes

    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    bootstrap.write_text(text)
    assert configured_gpu_nodes(bootstrap) == []


def test_a_gpu_node_without_cpus_gets_gpu_actors_that_reserve_none():
    plan = plan_pools([8], 1, "auto", cpus_per_gpu=0.0)
    assert (plan.embed.num_gpus, plan.embed.num_cpus) == (1, 0)


def test_a_launcher_config_left_by_a_former_head_is_ignored_by_a_ray_this_process_started(ray_session, monkeypatch, tmp_path):
    from pathlib import Path

    from shoplens.pipelines.ingest.ray_adapter import plan_cluster

    (tmp_path / "ray_bootstrap_config.yaml").write_text((Path(__file__).parents[3] / "ray_cluster.yaml").read_text())
    monkeypatch.setenv("HOME", str(tmp_path))
    assert plan_cluster("auto").embed.num_gpus == 0  # no GPU actors that no node could ever hold


def reserved(plan) -> float:
    return sum(pool.size * pool.num_cpus for pool in (plan.decode, plan.embed, plan.ocr) if pool is not None)


@pytest.mark.parametrize(
    ("node_cpus", "gpus"), [([2], 0), ([1], 0), ([16], 0), ([8, 8, 8], 0), ([16], 1), ([96], 8), ([4], 1), ([2], 1), ([3], 1)]
)
def test_ocr_gets_its_own_pool_out_of_the_same_cores(node_cpus, gpus):
    without, plan = plan_pools(node_cpus, gpus, "auto"), plan_pools(node_cpus, gpus, "auto", ocr=True)
    assert without.ocr is None and plan.ocr is not None and plan.ocr.num_gpus == 0
    assert reserved(plan) <= sum(node_cpus) + 1e-9 and math.isclose(reserved(plan), reserved(without), abs_tol=0.01)  # none promised twice
    assert plan.ocr.num_cpus <= max(node_cpus) and plan.ocr.size * plan.ocr.threads >= 1
    assert plan.embed.size == without.embed.size and plan.embed.num_gpus == without.embed.num_gpus
    if gpus:  # the GPU keeps its feeders; OCR takes decoders' cores
        assert plan.embed.num_cpus == without.embed.num_cpus and plan.decode.size >= 1
    else:  # OCR costs several times the model: it takes most of the model's cores
        assert plan.ocr.size * plan.ocr.num_cpus > plan.embed.size * plan.embed.num_cpus
