"""The one adapter between plain stages and Ray Data, and how the cluster's cores are shared."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

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
    ocr: StagePool | None = None  # reading text in pictures, where the policy asks for it


# Cores of each GPU actor: titles are tokenised, and the pixel models' inputs made, on the host.
GPU_ACTOR_CPUS = 4
# Rows of a GPU batch: each carries at most `encoders.decode.DEFER_MAX_BYTES` (1 MB) of JPEG, so
# a batch holds at most 512 MB of them (two are in flight per actor).
GPU_BATCH_ROWS = 512
SHIPPED_GPU_NODE_CPUS = 16  # a GPU node of ray_cluster.yaml, for a plan made before any is alive
# OCR (CPU only, on ONNX Runtime) costs about ten embeddings a picture at 640 px, and a hundred
# decodes (benchmarks/ocr.py): with it on, it takes this share of the model's cores on CPU
# clusters, of the decoders' on GPU clusters.
OCR_SHARE = 0.8
OCR_ACTOR_CPUS = 4
OCR_BATCH_ROWS = 8


def plan_pools(
    node_cpus: list[float], gpus: float, device: str, gpu_capacity: float = 0.0, cpus_per_gpu: float | None = None, ocr: bool = False
) -> PoolPlan:
    """`_plan_pools`, with OCR_SHARE of the cores it gives the model (CPU) or the decoders (GPU)
    moved to an OCR pool when `ocr`."""
    plan = _plan_pools(node_cpus, gpus, device, gpu_capacity, cpus_per_gpu)
    if not ocr:
        return plan
    if plan.embed.num_gpus:
        cores = plan.decode.size * plan.decode.num_cpus
        ocr_cpus = max(1, int(cores * OCR_SHARE)) if cores >= 2 else cores * OCR_SHARE  # one core: half each
        decoders = max(1, math.floor(cores - ocr_cpus))
        decode = StagePool(size=decoders, num_cpus=_cores((cores - ocr_cpus) / decoders), batch_size=plan.decode.batch_size)
        return PoolPlan(decode, plan.embed, _ocr_pool(ocr_cpus))
    embed = plan.embed
    ocr_cpus = embed.size * embed.num_cpus * OCR_SHARE
    return PoolPlan(plan.decode, StagePool(embed.size, _cores(embed.num_cpus * (1 - OCR_SHARE)), embed.batch_size), _ocr_pool(ocr_cpus))


def _cores(cpus: float) -> float:
    """`cpus` rounded down to Ray's resource precision (1/10,000): never more than was shared."""
    return math.floor(cpus * 10_000 + 1e-6) / 10_000


def _ocr_pool(cpus: float) -> StagePool:
    actors = max(1, math.ceil(cpus / OCR_ACTOR_CPUS))
    return StagePool(size=actors, num_cpus=_cores(cpus / actors), batch_size=OCR_BATCH_ROWS)


def _plan_pools(node_cpus: list[float], gpus: float, device: str, gpu_capacity: float = 0.0, cpus_per_gpu: float | None = None) -> PoolPlan:
    """Shares a cluster's cores (`node_cpus`, one entry per live node) between decoding and embedding.

    GPUs are planned from what the cluster can have, `gpu_capacity` (an autoscaling cluster's
    configured maximum), not only from the `gpus` alive now: a cluster whose GPU workers start at
    zero gets them when the GPU actors ask. One embed actor per GPU, fed by GPU_ACTOR_CPUS cores
    but at most half of what its node has per GPU (`cpus_per_gpu`, the fewest of any GPU node), so
    that it fits on its node beside decoders; as many start at once as there are GPUs alive, and
    every other core (of the live nodes and of the GPU nodes to come) decodes.
    On CPUs only, the model is the bottleneck: it gets the cores but a sixteenth (half a core at
    least), in actors of up to 8 cores that each fit on one node, and decoding (a few percent of
    the work) runs in what is left and in the gaps between model calls.
    """
    cpus = sum(node_cpus)
    reachable = int(max(gpus, gpu_capacity))
    if device == "cuda" and reachable < 1:
        raise ClusterError("--device cuda was asked for, but the Ray cluster has no GPU and none configured")
    if device != "cpu" and reachable >= 1:
        per_gpu = cpus_per_gpu if cpus_per_gpu is not None else (cpus / gpus if gpus >= 1 else SHIPPED_GPU_NODE_CPUS)
        feed = min(GPU_ACTOR_CPUS, per_gpu / 2)
        live = min(reachable, int(gpus))
        embed = StagePool(size=reachable, num_cpus=feed, num_gpus=1, batch_size=GPU_BATCH_ROWS, start=max(1, live))
        decode_cpus = max(1.0, cpus + (reachable - live) * per_gpu - reachable * feed)
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


def plan_cluster(device: str, ocr: bool = False) -> PoolPlan:
    """`plan_pools` for the cluster Ray is connected to."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    node_cpus = [node.get("CPU", 0.0) for node in nodes if node.get("CPU")] or [1.0]
    live_gpu_nodes = [(node.get("CPU", 0.0), node["GPU"]) for node in nodes if node.get("GPU")]
    # A Ray this process started is a local one, whatever launcher config a former head left here.
    configured = [] if _started_by_this_process() else configured_gpu_nodes()
    gpus = sum(g for _, g in live_gpu_nodes)
    capacity = sum(g * count for _, g, count in configured)
    shapes = live_gpu_nodes + [(c, g) for c, g, _ in configured]
    cpus_per_gpu = min((c / g for c, g in shapes), default=None)
    return plan_pools(node_cpus, gpus, device, min(capacity, MAX_PLANNED_GPUS), cpus_per_gpu, ocr)


def _started_by_this_process() -> bool:
    node = getattr(__import__("ray")._private.worker, "_global_node", None)
    return bool(node is not None and getattr(node, "head", False))


def configured_gpu_nodes(bootstrap: Path | None = None) -> list[tuple[float, float, int]]:
    """(CPUs, GPUs, the most nodes) of each GPU node type an autoscaler may start: from the
    cluster launcher's config on the head (`~/ray_bootstrap_config.yaml`, what `ray up` leaves
    there). Empty for a cluster without one (a local Ray, one started by hand)."""
    import yaml

    try:
        bootstrap = bootstrap or Path.home() / "ray_bootstrap_config.yaml"
        if not bootstrap.is_file():
            return []
        config = yaml.safe_load(bootstrap.read_text())
        node_types = config.get("available_node_types") or {}
        head = config.get("head_node_type")
        groups = []
        for name, node in node_types.items():
            resources = node.get("resources") or {}
            count = 1 if name == head else int(node.get("max_workers", config.get("max_workers", 0)))
            cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
            if gpus > 0 and count > 0 and math.isfinite(gpus) and math.isfinite(cpus) and cpus >= 0:
                groups.append((cpus, gpus, count))
        return groups
    except Exception as e:  # best effort, whatever the file holds (or the home folder refuses)
        log.warning("could not read the cluster's configured node types (%s): planning from the live nodes", e)
        return []
