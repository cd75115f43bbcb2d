"""The ingest job: manifest → decode (CPU actors) → embed (actor pool) → one LanceDB writer."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from encoders.clip import ClipEmbedder, ClipSpec
from encoders.media import ERROR, OK, SKIPPED, ImageDecoder, text_or_none
from encoders.weights import resolve_weights
from pipelines.manifest import read_manifest
from pipelines.ray_data import apply_stage, cluster_resources, init_ray, plan_pools
from pipelines.store import ItemStore, item_rows

log = logging.getLogger(__name__)
MAX_ERRORS_SHOWN = 20


class IngestConfig(BaseModel):
    """What a user asks of one ingest run (the CLI's flags)."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    manifest: Path
    db: str
    model: str = "ViT-B-32"
    pretrained: str = "laion2b_s34b_b79k"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    media_root: Path | None = None
    ray_address: str | None = None
    write_batch_rows: int = 2048  # rows per LanceDB commit: each commit is a table version
    write_interval_s: float = 60.0  # ...or this often, so a long job's progress is durable


@dataclass
class IngestSummary:
    command: str
    db: str
    model: str
    items: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # unchanged since the last run
    written: int = 0
    seconds: float = 0.0
    items_per_s: float = 0.0
    errors: list[dict] = field(default_factory=list)

    def count(self, item_id, status: str, error: str | None, written: bool) -> None:
        if status == OK:
            self.ok += 1
        else:
            self.record_error(item_id, error)
        self.skipped += not written

    def record_error(self, item_id, error, row=None) -> None:
        self.failed += 1
        if len(self.errors) < MAX_ERRORS_SHOWN:
            self.errors.append({"item_id": item_id, "error": error} | ({"row": row} if row else {}))

    def to_dict(self) -> dict:
        return asdict(self)


def ingest(config: IngestConfig, on_rows: Callable[[int], None] | None = None) -> IngestSummary:
    """Runs one ingest. Raises ManifestError/WeightsError/StoreError for unusable input (exit 2);
    per-item problems are recorded in rows and counted in the summary."""
    started = time.perf_counter()
    manifest = read_manifest(config.manifest, config.media_root)
    # Importing OpenCLIP (torch) and starting Ray take seconds each: do them at once. Ray starts
    # before LanceDB is opened, so that no process forks from a driver running LanceDB's threads.
    with ThreadPoolExecutor(max_workers=1) as pool:
        resolving = pool.submit(resolve_weights, config.model, config.pretrained)
        init_ray(config.ray_address)
        source = resolving.result()
    store = ItemStore(config.db)
    table = store.items(source.embed_dim)
    summary = IngestSummary("ingest", config.db, source.provenance, items=manifest.rows.num_rows + len(manifest.rejected))
    for rejected in manifest.rejected:
        summary.record_error(rejected["item_id"], rejected["error"], rejected["row"])

    rows, previous = store.mark_unchanged(table, manifest.rows, source.provenance)
    pools = plan_pools(*cluster_resources(), device=config.device)
    log.info("pools: %s", pools)
    import ray.data

    # Many small blocks, not one: decode, embed and the writer then work on different blocks at once.
    block_rows = pools.embed.batch_size * 2
    ds = ray.data.from_arrow([rows.slice(start, block_rows) for start in range(0, max(rows.num_rows, 1), block_rows)])
    ds = apply_stage(ds, ImageDecoder, pools.decode, stateless=True, image_size=source.image_size)
    ds = apply_stage(
        ds, ClipEmbedder, pools.embed, spec=ClipSpec(config.model, config.pretrained, config.device),
        num_threads=pools.embed.threads,
    )
    pending: list[pa.Table] = []
    last_write = time.monotonic()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
        write = _tally(batch, previous, summary)
        if write.any():
            pending.append(item_rows({k: v[write] for k, v in batch.items()}, table.schema))
        if on_rows:
            on_rows(len(write))
        if sum(t.num_rows for t in pending) >= config.write_batch_rows or (
            pending and time.monotonic() - last_write > config.write_interval_s
        ):
            summary.written += _flush(store, table, pending)
            last_write = time.monotonic()
    summary.written += _flush(store, table, pending)
    summary.seconds = round(time.perf_counter() - started, 3)
    summary.items_per_s = round(summary.items / summary.seconds, 2) if summary.seconds else 0.0
    return summary


def _tally(batch: dict[str, np.ndarray], previous: dict[str, tuple], summary: IngestSummary) -> np.ndarray:
    """Counts each row's outcome in `summary`; returns which rows must be written."""
    write = np.zeros(len(batch["item_id"]), dtype=bool)
    for i, (item_id, status, error) in enumerate(zip(batch["item_id"], batch["status"], batch["error"])):
        error = text_or_none(error)
        if status == SKIPPED:
            status, error = previous[item_id]
        else:
            # A failure that repeats exactly what is stored changes nothing either.
            write[i] = not (status == ERROR and previous.get(item_id) == (ERROR, error))
        summary.count(item_id, status, error, written=write[i])
    return write


def _flush(store: ItemStore, table, pending: list[pa.Table]) -> int:
    if not pending:
        return 0
    rows = pa.concat_tables(pending)
    store.upsert(table, rows)
    pending.clear()
    return rows.num_rows
