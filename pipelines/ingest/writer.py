"""The one writer of an ingest (and a rescore): scored batches become `items` and `frames` rows,
committed in large batches. Every LanceDB write makes a table version, and concurrent
`merge_insert`s on the same keys conflict: one writer, few commits."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from shoplens.encoders.media import text_or_none
from shoplens.encoders.ocr import distinct_lines, frame_text, frames_read
from shoplens.encoders.rows import OK, PRODUCT, UNSCORED, VIDEO_KINDS, is_category_risk, risk_column
from shoplens.pipelines.store.codes import item_codes
from shoplens.pipelines.store.database import ItemStore
from shoplens.pipelines.store.schemas import METADATA_FIELDS, SAFETY_FIELDS


def frame_rows(batch: dict[str, np.ndarray], schema: pa.Schema, categories: list[str]) -> pa.Table:
    """One row per sampled frame of each embedded video or live segment, with its risks:
    `frame_risks` [F, C] are in the order of `categories` (the scoring policy's), and go to their
    columns by name; a column of a category the policy does not have is null."""
    dim = schema.field("vector").type.list_size
    risk_names = [risk_column(c) for c in categories]
    columns = {
        "item_id": [],
        "frame_index": [],
        "timestamp_s": [],
        "model": [],
        "pdq": [],
        "pdq_quality": [],
        "hash_match": [],
        "signal_scores": [],
        "ocr_lines": [],
    }
    vectors, risks = [], []
    for i in np.flatnonzero((batch["status"] == OK) & np.isin(batch["kind"], VIDEO_KINDS)):
        count = len(batch["frame_index"][i])
        columns["item_id"] += [batch["item_id"][i]] * count
        columns["frame_index"] += list(batch["frame_index"][i])
        columns["timestamp_s"] += list(batch["timestamp_s"][i])
        columns["model"] += [batch["model"][i]] * count
        columns["pdq"] += list(batch["pdq"][i])
        columns["pdq_quality"] += [None if q < 0 else int(q) for q in batch["pdq_quality"][i]]
        columns["hash_match"] += list(batch["frame_hash_match"][i])
        columns["signal_scores"] += list(batch["frame_signal_scores"][i])
        read = frames_read(batch["frame_ocr_lines"][i]) if "frame_ocr_lines" in batch else None
        if read is None:
            columns["ocr_lines"] += [None] * count
        else:
            columns["ocr_lines"] += [distinct_lines([lines], [seconds]) for lines, seconds in zip(read, batch["timestamp_s"][i])]
        vectors.append(np.asarray(batch["frame_vectors"][i], np.float32).reshape(-1, dim))
        risks.append(np.asarray(batch["frame_risks"][i], np.float32).reshape(-1, len(risk_names)))
    n = len(columns["item_id"])
    vectors = np.concatenate(vectors) if n else np.zeros((0, dim), np.float32)
    risks = np.concatenate(risks) if n else np.zeros((0, len(risk_names)), np.float32)
    columns |= {name: _floats(risks[:, k]) for k, name in enumerate(risk_names)}
    columns |= {f.name: pa.nulls(n, f.type) for f in schema if is_category_risk(f.name) and f.name not in columns}
    with np.errstate(invalid="ignore"):
        columns["risk"] = _floats(risks.max(axis=1) if risk_names else np.full(n, np.nan))
    return pa.table({**columns, "vector": _vectors(vectors, np.ones(n, bool), dim)}, schema=schema)


def item_rows(batch: dict[str, np.ndarray], schema: pa.Schema, categories: list[str] | None = None) -> pa.Table:
    """Embedded and scored rows (the model stage's output batch) as `items` rows: vectors null
    unless embedded, safety columns as the scorer left them (null and `unscored` without it).
    `risk_<c>` of a category not in `categories` (the scoring policy's) is null, whatever the
    batch carries: a rescored row keeps no risk its policy no longer has."""
    ok = np.asarray(batch["status"] == OK)
    titled = ok & np.array([text_or_none(t) is not None for t in batch["title"]], dtype=bool)
    n = len(ok)
    dim = schema.field("vector").type.list_size
    columns = {name: _strings(batch[name]) for name in METADATA_FIELDS}
    columns["vector"] = _vectors(batch["vector"], ok, dim)
    columns["text_vector"] = _vectors(batch["text_vector"], titled, dim)
    columns["model"] = _strings(batch["model"])
    columns["updated_at"] = pa.array([dt.datetime.now(dt.timezone.utc)] * n, pa.timestamp("us", tz="UTC"))
    if "pdq" in batch:  # fingerprinted: a product's hash is its one frame's
        first = [kind == PRODUCT and len(h) > 0 for kind, h in zip(batch["kind"], batch["pdq"])]
        columns["pdq"] = _strings([h[0] if f else None for f, h in zip(first, batch["pdq"])])
        columns["pdq_quality"] = _column(np.array([q[0] if f else -1 for f, q in zip(first, batch["pdq_quality"])]), pa.int32())
    safety_names = {f.name for f in SAFETY_FIELDS}
    current = None if categories is None else {risk_column(c) for c in categories}
    for field in schema:
        if field.name.startswith("risk") or field.name in safety_names:
            stale = current is not None and is_category_risk(field.name) and field.name not in current
            values = None if stale else batch.get(field.name)
            columns[field.name] = pa.nulls(n, field.type) if values is None else _column(values, field.type)
    if "decision" not in batch:
        columns["decision"] = pa.array([UNSCORED] * n, pa.string())
    if "frame_ocr_lines" in batch:  # what OCR read: an item's distinct lines over its frames
        read = map(frames_read, batch["frame_ocr_lines"])
        lines = [None if frames is None else distinct_lines(frames, seconds) for frames, seconds in zip(read, batch["timestamp_s"])]
        columns["ocr_lines"] = pa.array(lines, schema.field("ocr_lines").type)
        columns["ocr_text"] = _strings([None if read is None else frame_text(read) for read in lines])
        columns["ocr_model"] = _strings(batch["ocr_model"])
    # Columns other commands fill (dedup, ...): kept when the batch carries them (a rescore of
    # stored rows), else null (a re-ingested item is a new item).
    missing = [f for f in schema if f.name not in columns]
    columns |= {f.name: pa.array(list(batch[f.name]), f.type) if f.name in batch else pa.nulls(n, f.type) for f in missing}
    return pa.table(columns, schema=schema)


def _vectors(values: np.ndarray, present: np.ndarray, dim: int) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(~present))


def _strings(values) -> pa.Array:
    return pa.array([text_or_none(v) for v in values], pa.string())


def _floats(values: np.ndarray) -> pa.Array:
    """NaN (not scored) becomes null: a missing score must never read as a number."""
    values = np.asarray(values, np.float32)
    return pa.array(values, pa.float32(), mask=~np.isfinite(values))


def _column(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    if pa.types.is_floating(type_):
        return _floats(values)
    if pa.types.is_integer(type_):
        values = np.asarray(values, np.int64)
        return pa.array(values, type_, mask=values < 0)  # -1: not counted
    return _strings(values)


class PendingWrites:
    """Rows waiting for the one writer, committed in batches of at most `commit_rows` items. It
    reads what the stages made (the safety columns too, where scoring ran: null without it)."""

    reads = (
        *METADATA_FIELDS,
        "vector",
        "text_vector",
        "model",
        "pdq",
        "pdq_quality",
        "frame_index",
        "timestamp_s",
        "frame_vectors",
        "frame_risks",
        "frame_hash_match",
        "frame_signal_scores",
    )

    def __init__(self, store: ItemStore, items, frames, commit_rows: int, categories: list[str], codebooks=None):
        self.store, self.items, self.frames, self.commit_rows = store, items, frames, commit_rows
        self.codebooks = codebooks  # semantic IDs for the items written (encoders.codes); None: none
        self.categories = list(categories)  # the scoring policy's, in the order of its `frame_risks`
        self.item_rows: list[pa.Table] = []
        self.frame_rows: list[pa.Table] = []
        self.rows = 0

    def add(self, batch: dict[str, np.ndarray]) -> None:
        rows = item_rows(batch, self.items.schema, self.categories)
        if self.codebooks is not None:  # with codebooks of the job's model: its new items get codes
            for name, column in item_codes(self.codebooks, rows["vector"]).items():
                rows = rows.set_column(rows.schema.get_field_index(name), name, column)
        self.item_rows.append(rows)
        self.frame_rows.append(frame_rows(batch, self.frames.schema, self.categories))
        self.rows += len(batch["item_id"])

    def flush(self) -> int:
        import pyarrow.compute as pc

        if not self.rows:
            return 0
        items, frames = pa.concat_tables(self.item_rows), pa.concat_tables(self.frame_rows)
        for start in range(0, items.num_rows, self.commit_rows):
            chunk = items.slice(start, self.commit_rows)
            # Frames first: a crash between the two commits then leaves items that a re-run
            # redoes, never an item marked done whose frames are missing.
            chunk_frames = frames.filter(pc.is_in(frames["item_id"], value_set=chunk["item_id"]))
            self.store.replace_frames(self.frames, chunk["item_id"].to_pylist(), chunk_frames)
            self.store.upsert(self.items, chunk)
        written, self.rows = self.rows, 0
        self.item_rows.clear()
        self.frame_rows.clear()
        return written
