"""The one adapter between plain stages and Ray Data, and how the cluster's cores are shared."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from shoplens.encoders.errors import UsageError

log = logging.getLogger(__name__)
MAX_PLANNED_GPUS = 64  # an unbounded node group (max_workers -1) reads as sys.maxsize


class ClusterError(UsageError):
    """The cluster cannot run the job as configured."""


@dataclass(frozen=True)
class StagePool:
    """How many actors run a stage, what each reserves, and how many rows each call gets."""

    size: int
    num_cpus: float
    batch_size: int
    num_gpus: float = 0.0
    start: int = 1  # actors started at once, before the pool grows on demand

    @property
    def threads(self) -> int:
        """Threads a stage may use: the cores it reserved, rounded up (a 1.5-CPU actor gets 2)."""
        return max(1, math.ceil(self.num_cpus))

    @property
    def device(self) -> str:
        """The device the stage's actors hold: a GPU actor that cannot use it must fail, not run on its one core."""
        return "cuda" if self.num_gpus else "cpu"


@dataclass(frozen=True)
class PoolPlan:
    decode: StagePool
    embed: StagePool


# Cores of each GPU actor: titles are tokenised, and the pixel models' inputs made, on the host.
GPU_ACTOR_CPUS = 4
# Rows of a GPU batch: each carries at most `encoders.decode.DEFER_MAX_BYTES` (1 MB) of JPEG, so
# a batch holds at most 512 MB of them (two are in flight per actor).
GPU_BATCH_ROWS = 512


def plan_pools(node_cpus: list[float], gpus: float, device: str, gpu_capacity: float = 0.0) -> PoolPlan:
    """Shares a cluster's cores (`node_cpus`, one entry per live node) between decoding and embedding.

    GPUs are planned from what the cluster can have, `gpu_capacity` (an autoscaling cluster's
    configured maximum), not only from the `gpus` alive now: a cluster whose GPU workers start at
    zero gets them when the GPU actors ask. One embed actor per GPU, with GPU_ACTOR_CPUS cores to
    feed it; as many start at once as there are GPUs alive, and every other core decodes.
    On CPUs only, the model is the bottleneck: it gets the cores but a sixteenth (half a core at
    least), in actors of up to 8 cores that each fit on one node, and decoding (a few percent of
    the work) runs in what is left and in the gaps between model calls.
    """
    cpus = sum(node_cpus)
    reachable = int(max(gpus, gpu_capacity))
    if device == "cuda" and reachable < 1:
        raise ClusterError("--device cuda was asked for, but the Ray cluster has no GPU and none configured")
    if device != "cpu" and reachable >= 1:
        # At most half the live cores feed GPUs (so that GPU actors fit beside the decoders); GPU
        # nodes not started yet are planned as the shipped cluster's (16 cores each).
        feed = min(GPU_ACTOR_CPUS, max(1, int(cpus // (2 * gpus)))) if gpus >= 1 else GPU_ACTOR_CPUS
        embed = StagePool(size=reachable, num_cpus=feed, num_gpus=1, batch_size=GPU_BATCH_ROWS, start=max(1, int(gpus)))
        decode_cpus = max(1.0, cpus - int(gpus) * feed)
        return PoolPlan(StagePool(size=int(decode_cpus), num_cpus=1, batch_size=64), embed)
    decode_cpus = max(0.5, cpus / 16)
    decode_actors = math.ceil(decode_cpus)
    decode = StagePool(size=decode_actors, num_cpus=decode_cpus / decode_actors, batch_size=16)
    if len(node_cpus) == 1:  # one node: its cores split evenly between model actors
        actors = max(1, int((cpus - decode_cpus) // 8))
        return PoolPlan(decode, StagePool(size=actors, num_cpus=(cpus - decode_cpus) / actors, batch_size=32))
    per_actor = min(8.0, max(node_cpus))
    actors = max(1, int((cpus - decode_cpus) // per_actor))
    return PoolPlan(decode, StagePool(size=actors, num_cpus=per_actor, batch_size=32))


def apply_stage(ds, stage_cls, pool: StagePool, *, stateless: bool = False, **constructor_kwargs):
    """Runs a plain stage class (constructor loads, `__call__(batch)` maps) on Ray Data.

    A stage with a model runs on a pool of actors that load it once. A `stateless` stage (cheap to
    construct) runs as tasks instead: they start on Ray's pre-started workers, while an actor
    costs a new process, which on a small machine delays the model's own start.
    """
    import ray.data

    common = dict(num_cpus=pool.num_cpus, batch_size=pool.batch_size, batch_format="numpy")
    if stateless:
        return ds.map_batches(
            _run_stateless,
            fn_kwargs={"stage_cls": stage_cls, "kwargs": constructor_kwargs},
            compute=ray.data.TaskPoolStrategy(size=pool.size),
            **common,
        )
    return ds.map_batches(
        stage_cls,
        fn_constructor_kwargs=constructor_kwargs,
        compute=ray.data.ActorPoolStrategy(min_size=min(pool.start, pool.size), max_size=pool.size),
        num_gpus=pool.num_gpus or None,
        **common,
    )


def _run_stateless(batch, stage_cls, kwargs):
    return stage_cls(**kwargs)(batch)


def init_ray(address: str | None) -> None:
    """Joins `address` (or a running cluster), else starts a local one; logs stay off stdout."""
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,  # stdout carries only the JSON summary
            logging_level=logging.WARNING,
        )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the CLI draws its own, on stderr
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def plan_cluster(device: str) -> PoolPlan:
    """`plan_pools` for the cluster Ray is connected to."""
    node_cpus, gpus, capacity = cluster_resources()
    return plan_pools(node_cpus, gpus, device, capacity)


def cluster_resources() -> tuple[list[float], float, float]:
    """(CPUs of each live node, GPUs alive, GPUs the cluster may have): an autoscaling cluster's
    configured maximum, or the live count where no autoscaler configures one (a local Ray)."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    gpus = sum(n.get("GPU", 0.0) for n in nodes)
    return [node.get("CPU", 0.0) for node in nodes if node.get("CPU")] or [1.0], gpus, max(gpus, _configured_gpus())


def _configured_gpus() -> float:
    """The most GPUs the autoscaler's configuration allows (0 without one). Ray Data and Ray
    Train read it through this same private call."""
    from ray._private.state import state

    try:
        configured = state.get_max_resources_from_cluster_config() or {}
    except Exception as e:  # a private API: a Ray that moved it plans from the live nodes
        log.warning("could not read the cluster's configured resources (%s): planning from the live nodes", e)
        return 0.0
    return float(min(configured.get("GPU", 0), MAX_PLANNED_GPUS))
