"""The one adapter between plain stages and Ray Data, and how the cluster's cores are shared."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from shoplens.encoders.errors import UsageError


class ClusterError(UsageError):
    """The cluster cannot run the job as configured."""


@dataclass(frozen=True)
class StagePool:
    """How many actors run a stage, what each reserves, and how many rows each call gets."""

    size: int
    num_cpus: float
    batch_size: int
    num_gpus: float = 0.0

    @property
    def threads(self) -> int:
        """Threads a stage may use: the cores it reserved, rounded up (a 1.5-CPU actor gets 2)."""
        return max(1, math.ceil(self.num_cpus))


@dataclass(frozen=True)
class PoolPlan:
    decode: StagePool
    embed: StagePool


def plan_pools(node_cpus: list[float], gpus: float, device: str) -> PoolPlan:
    """Shares a cluster's cores (`node_cpus`, one entry per node) between decoding and embedding.

    On GPUs, one embed actor per GPU with one core to feed it, and every other core decodes.
    On CPUs only, the model is the bottleneck: it gets the cores but a sixteenth (half a core at
    least), in actors of up to 8 cores that each fit on one node, and decoding (a few percent of
    the work) runs in what is left and in the gaps between model calls.
    """
    cpus = sum(node_cpus)
    if device == "cuda" and gpus < 1:
        raise ClusterError("--device cuda was asked for, but the Ray cluster has no GPU")
    if device != "cpu" and gpus >= 1:
        embed = StagePool(size=int(gpus), num_cpus=1, num_gpus=1, batch_size=512)
        decode_cpus = max(1.0, cpus - embed.size)
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
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool.size),
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


def cluster_resources() -> tuple[list[float], float]:
    """(CPUs of each live node, GPUs in all)."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    return [node.get("CPU", 0.0) for node in nodes if node.get("CPU")] or [1.0], sum(n.get("GPU", 0.0) for n in nodes)
