"""The LanceDB store: the `items` schema, what earlier runs wrote, and keyed upserts.

One writer, in large batches: every LanceDB write makes a table version, and concurrent
`merge_insert`s on the same keys conflict.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from encoders.media import OK, text_or_none

ITEMS = "items"
FRAMES = "frames"
VIDEO_KINDS = ("video", "live")
UNSCORED = "unscored"
# What an unchanged item must match, besides its media bytes, to be skipped on a re-run.
SKIP_KEY_FIELDS = ("model", "kind", "title", "category", "seller_id", "media_uri", "frames")
# `note` (what was capped or cut short) and `frames` (the video's sampling) extend the design's columns.
METADATA_FIELDS = (
    "item_id", "kind", "title", "category", "seller_id", "media_uri", "media_sha256", "status", "error", "note", "frames",
)


class StoreError(RuntimeError):
    """The database cannot take this job (a configuration error: exit code 2)."""


def items_schema(dim: int) -> pa.Schema:
    vector = pa.list_(pa.float32(), dim)
    return pa.schema(
        [pa.field("item_id", pa.string(), nullable=False)]
        + [pa.field(name, pa.string()) for name in METADATA_FIELDS[1:]]
        + [
            pa.field("vector", vector),
            pa.field("text_vector", vector),
            pa.field("model", pa.string()),
            pa.field("updated_at", pa.timestamp("us", tz="UTC")),
            pa.field("risk", pa.float32()),
            pa.field("decision", pa.string()),
            pa.field("safety_version", pa.string()),
            pa.field("evidence_timestamp_s", pa.float32()),
            # Near-duplicate groups (`shoplens dedup`): the group's smallest item_id and its size.
            pa.field("dup_group", pa.string()),
            pa.field("dup_count", pa.int32()),
        ]
    )


def frames_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("item_id", pa.string(), nullable=False),
            pa.field("frame_index", pa.int64(), nullable=False),
            pa.field("timestamp_s", pa.float32()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
            pa.field("model", pa.string()),
            pa.field("risk", pa.float32()),
        ]
    )


class ItemStore:
    def __init__(self, uri: str):
        import lancedb

        self.uri = uri
        self.db = lancedb.connect(uri)

    def items(self, dim: int):
        """The `items` table, created if missing; refuses a table of another vector size."""
        return self._table(ITEMS, items_schema(dim))

    def frames(self, dim: int):
        """The `frames` table (one row per sampled video frame), created if missing."""
        return self._table(FRAMES, frames_schema(dim))

    def existing(self, name: str):
        """The table called `name`, or None when the database has none."""
        try:
            return self.db.open_table(name)
        except ValueError:  # not found
            return None

    def _table(self, name: str, schema: pa.Schema):
        table = self.existing(name)
        if table is None:
            return self.db.create_table(name, schema=schema)
        stored, wanted = table.schema.field("vector").type, schema.field("vector").type
        if stored != wanted:
            raise StoreError(
                f"{self.uri}: table {name!r} holds {stored} vectors, but this model makes {wanted.list_size}-d ones; "
                "use another --db, or the model the table was built with"
            )
        missing = [field for field in schema if field.name not in table.schema.names]
        if missing:  # a table from an older release: new columns are added, null, never renamed
            table.add_columns(missing)
        return table

    def mark_unchanged(self, table, manifest: pa.Table, model: str) -> tuple[pa.Table, dict[str, tuple]]:
        """Adds `known_sha256` to the manifest rows: the hash an unchanged item's bytes will match.

        An item is unchanged when an earlier run stored it with the same model and fields, and
        either embedded it or failed on the same bytes. Returns the rows and, for every item
        stored with the same model and fields, its stored (status, error), so that a failure
        that repeats itself exactly is not written again.
        """
        stored = table.search().select(["item_id", "media_sha256", "status", "error", *SKIP_KEY_FIELDS])
        previous = {row["item_id"]: row for row in stored.limit(None).to_arrow().to_pylist()}
        known, same_fields = [], {}
        for row in manifest.to_pylist():
            old = previous.get(row["item_id"])
            if old is not None and all(old[f] == (model if f == "model" else row[f]) for f in SKIP_KEY_FIELDS):
                same_fields[row["item_id"]] = (old["status"], old["error"])
                known.append(old["media_sha256"] if row["status"] == OK else None)
            else:
                known.append(None)
        return manifest.append_column("known_sha256", pa.array(known, pa.string())), same_fields

    def upsert(self, table, rows: pa.Table) -> None:
        if rows.num_rows:
            # Nulls are how failed rows store "no vector"; NaNs were turned into errors upstream.
            (
                table.merge_insert("item_id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(rows, on_bad_vectors="null")
            )

    def update_columns(self, table, rows: pa.Table) -> None:
        """Sets the columns in `rows` (keyed by `item_id`) on existing items, in one commit."""
        if rows.num_rows:
            table.merge_insert("item_id").when_matched_update_all().execute(rows)

    def replace_frames(self, table, item_ids: list[str], rows: pa.Table) -> None:
        """Makes `rows` the only frames of `item_ids`, in one commit: frames an item no longer
        has (it was re-sampled, now fails, or is no longer a video) are deleted as the new ones
        are upserted. Writes nothing, and makes no table version, when there is nothing to do."""
        from lancedb.expr import col

        of_these = col("item_id").isin(item_ids)  # typed: item ids never become SQL text
        if not item_ids or (rows.num_rows == 0 and not table.search().where(of_these).select(["item_id"]).limit(1).to_list()):
            return
        (
            table.merge_insert(["item_id", "frame_index"])
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(of_these)
            .execute(rows)
        )


def frame_rows(batch: dict[str, np.ndarray], schema: pa.Schema) -> pa.Table:
    """One row per sampled frame of each embedded video or live segment."""
    dim = schema.field("vector").type.list_size
    columns = {"item_id": [], "frame_index": [], "timestamp_s": [], "model": [], "vector": []}
    for i in np.flatnonzero((batch["status"] == OK) & np.isin(batch["kind"], VIDEO_KINDS)):
        count = len(batch["frame_index"][i])
        columns["item_id"] += [batch["item_id"][i]] * count
        columns["frame_index"] += list(batch["frame_index"][i])
        columns["timestamp_s"] += list(batch["timestamp_s"][i])
        columns["model"] += [batch["model"][i]] * count
        columns["vector"].append(np.asarray(batch["frame_vectors"][i], np.float32).reshape(-1, dim))
    vectors = np.concatenate(columns.pop("vector")) if columns["item_id"] else np.zeros((0, dim), np.float32)
    n = len(columns["item_id"])
    return pa.table(
        {**columns, "vector": _vectors(vectors, np.ones(n, bool), dim), "risk": pa.nulls(n, pa.float32())},
        schema=schema,
    )


def item_rows(batch: dict[str, np.ndarray], schema: pa.Schema) -> pa.Table:
    """Embedded rows (a stage's output batch) as `items` rows: vectors null unless embedded."""
    ok = np.asarray(batch["status"] == OK)
    titled = ok & np.array([text_or_none(t) is not None for t in batch["title"]], dtype=bool)
    n = len(ok)
    dim = schema.field("vector").type.list_size
    columns = {name: _strings(batch[name]) for name in METADATA_FIELDS}
    columns["vector"] = _vectors(batch["vector"], ok, dim)
    columns["text_vector"] = _vectors(batch["text_vector"], titled, dim)
    columns["model"] = _strings(batch["model"])
    columns["updated_at"] = pa.array([dt.datetime.now(dt.timezone.utc)] * n, pa.timestamp("us", tz="UTC"))
    columns["risk"] = pa.nulls(n, pa.float32())
    columns["decision"] = pa.array([UNSCORED] * n, pa.string())
    columns["safety_version"] = pa.nulls(n, pa.string())
    columns["evidence_timestamp_s"] = pa.nulls(n, pa.float32())
    columns["dup_group"] = pa.nulls(n, pa.string())  # new media: not deduplicated yet
    columns["dup_count"] = pa.nulls(n, pa.int32())
    return pa.table(columns, schema=schema)


def _vectors(values: np.ndarray, present: np.ndarray, dim: int) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(~present))


def _strings(values: np.ndarray) -> pa.Array:
    return pa.array([text_or_none(v) for v in values], pa.string())
