"""The ingest job: manifest → decode (CPU tasks) → embed (actor pool) → one LanceDB writer."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, field_validator

from shoplens.encoders.clip import ClipSpec
from shoplens.encoders.decode import MediaDecoder
from shoplens.encoders.media import text_or_none
from shoplens.encoders.ocr import ReadText
from shoplens.encoders.rows import ERROR, OK, PRODUCT, SKIPPED
from shoplens.encoders.video import DEFAULT_SAMPLING, FrameSampling
from shoplens.encoders.weights import DEFAULT_MODEL, DEFAULT_PRETRAINED, ModelSource, resolve_weights
from shoplens.pipelines.ingest.manifest import read_manifest
from shoplens.pipelines.ingest.ray_adapter import apply_stage, init_ray, plan_cluster
from shoplens.pipelines.ingest.writer import PendingWrites
from shoplens.pipelines.moderation.bank_add import block_stored_matches
from shoplens.pipelines.store.database import ItemStore
from shoplens.pipelines.store.schemas import ITEMS
from shoplens.safety.hashbank import HashBank
from shoplens.safety.heads import load_policy_and_heads
from shoplens.safety.policy import Policy
from shoplens.safety.stage import EmbedAndScore

log = logging.getLogger(__name__)
MAX_ERRORS_SHOWN = 20


class IngestConfig(BaseModel):
    """What a user asks of one ingest run (the CLI's flags)."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    manifest: str  # a local path, or an s3:// or gs:// URI
    db: str
    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # JPEGs decoded by the embed stage on its device (nvJPEG): `auto` does it where the embed stage has a GPU.
    device_decode: Literal["auto", "on", "off"] = "auto"
    frames: str = DEFAULT_SAMPLING  # how videos are sampled, unless a row's `frames` says otherwise
    media_root: str | None = None  # a local folder, or an s3:// or gs:// prefix
    policy: Path | None = None  # a safety policy file [default: the database's calibrated one, else the shipped one]
    ray_address: str | None = None
    write_batch_rows: int = 2048  # items per LanceDB commit: each commit is a table version
    write_interval_s: float = 60.0  # ...or this often, so a long job's progress is durable

    @field_validator("manifest", "media_root", "db", mode="before")
    @classmethod
    def _path_as_text(cls, value):
        return os.fspath(value) if isinstance(value, os.PathLike) else value  # a Path, or a URI

    @field_validator("frames")
    @classmethod
    def _valid_sampling(cls, value: str) -> str:
        return str(FrameSampling.parse(value))  # a bad default is a usage error, not 1M row errors


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


def ingest(
    config: IngestConfig, on_rows: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None
) -> IngestSummary:
    """Runs one ingest. Raises ManifestError/WeightsError/StoreError for unusable input (exit 2);
    per-item problems are recorded in rows and counted in the summary. `on_total` hears how many
    rows the manifest holds, `on_rows` how many more are done."""
    started = time.perf_counter()
    manifest = read_manifest(config.manifest, config.media_root, config.frames)
    if on_total:
        on_total(manifest.rows.num_rows)
    # A policy file given is read (and a bad one refused, exit 2) before Ray starts.
    given = load_policy_and_heads(config.policy) if config.policy is not None else None
    # Importing OpenCLIP (torch) and starting Ray take seconds each: do them at once. Ray starts
    # before LanceDB is opened, so that no process forks from a driver running LanceDB's threads.
    with ThreadPoolExecutor(max_workers=1) as pool:
        resolving = pool.submit(resolve_weights, config.model, config.pretrained)
        init_ray(config.ray_address)
        source = resolving.result()
    store = ItemStore(config.db)
    policy, heads = given or store.policy()
    if heads is not None:
        heads.check_fits(source.provenance, source.embed_dim)
    table = store.items(source.embed_dim, policy.names)
    if config.policy is not None and store.remember_policy(policy, heads) and store.count(ITEMS):
        log.warning(
            "the database's policy is now %s: items skipped as unchanged keep their earlier decisions "
            "until `shoplens safety rescore --db %s`",
            policy.version,
            config.db,
        )
    frames_table = store.frames(source.embed_dim, policy.names)
    bank = store.hash_bank()
    summary = IngestSummary("ingest", config.db, source.provenance, items=manifest.rows.num_rows + len(manifest.rejected))
    for rejected in manifest.rejected:
        summary.record_error(rejected["item_id"], rejected["error"], rejected["row"])

    rows = store.mark_unchanged(table, manifest.rows, source.provenance, policy.ocr.provenances())
    codebooks = store.codebooks()
    if codebooks is not None and codebooks.model != source.provenance:
        log.warning("the database's codebooks code %s vectors, not %s: items are written without codes", codebooks.model, source.provenance)
        codebooks = None
    pending = PendingWrites(store, table, frames_table, config.write_batch_rows, policy.names, codebooks)
    last_write = time.monotonic()
    for batch in _scored_batches(rows, source, config, policy, heads, bank, manifest.root):
        write = _tally(batch, summary)
        if write.any():
            pending.add({k: v[write] for k, v in batch.items()})
        if on_rows:
            on_rows(len(write))
        if pending.rows >= config.write_batch_rows or (pending.rows and time.monotonic() - last_write > config.write_interval_s):
            summary.written += pending.flush()
            last_write = time.monotonic()
    summary.written += pending.flush()
    # Bank entries added while this job ran were matched by `bank add` against what was stored
    # then: this job's own rows are matched against them now.
    added = store.hash_bank().without(bank.entry_ids)
    if added.entry_ids:
        block_stored_matches(store, added, policy)
    summary.seconds = round(time.perf_counter() - started, 3)
    summary.items_per_s = round(summary.items / summary.seconds, 2) if summary.seconds else 0.0
    return summary


def _scored_batches(
    rows: pa.Table, source: ModelSource, config: IngestConfig, policy: Policy, heads, bank: HashBank, media_root: str | None
):
    """The Ray Data pipeline: batches of decoded, embedded and scored rows, in no particular order."""
    if rows.num_rows == 0:
        return
    import ray.data

    pools = plan_cluster(config.device, ocr=policy.ocr.enabled)
    log.info("pools: %s", pools)
    # Many small blocks, not one: decode, embed and the writer then work on different blocks at once.
    block_rows = pools.embed.batch_size * 2
    ds = ray.data.from_arrow([rows.slice(start, block_rows) for start in range(0, rows.num_rows, block_rows)])
    defer = config.device_decode == "on" or (config.device_decode == "auto" and pools.embed.num_gpus > 0)
    if defer and policy.ocr.reads(PRODUCT):
        log.warning("product images are decoded on the CPU, not the embedding device: the policy's OCR reads them whole on the host")
    ds = apply_stage(
        ds,
        MediaDecoder,
        pools.decode,
        stateless=True,
        image_size=source.image_size,
        fingerprint=True,
        defer_jpegs=defer,
        media_root=media_root,
        read_side=policy.ocr.read_sides(),
    )
    if pools.ocr is not None:
        ocr = policy.ocr
        ds = apply_stage(
            ds,
            ReadText,
            pools.ocr,
            max_side=ocr.max_side,
            min_confidence=ocr.min_confidence,
            repeat_distance=ocr.repeat_distance,
            num_threads=pools.ocr.threads,
        )
    ds = apply_stage(
        ds,
        EmbedAndScore,
        pools.embed,
        spec=ClipSpec.resolved(source, pools.embed.device),
        policy=policy,
        heads=heads,
        bank=bank,
        num_threads=pools.embed.threads,
    )
    yield from ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0)


def _tally(batch: dict[str, np.ndarray], summary: IngestSummary) -> np.ndarray:
    """Counts each row's outcome in `summary`; returns which rows must be written."""
    write = np.zeros(len(batch["item_id"]), dtype=bool)
    rows = zip(batch["item_id"], batch["status"], batch["error"], batch["known_status"], batch["known_error"])
    for i, (item_id, status, error, known_status, known_error) in enumerate(rows):
        error, known = text_or_none(error), (text_or_none(known_status), text_or_none(known_error))
        if status == SKIPPED:
            status, error = known
        else:
            # A failure that repeats exactly what is stored changes nothing either.
            write[i] = not (status == ERROR and known == (ERROR, error))
        summary.count(item_id, status, error, written=write[i])
    return write
