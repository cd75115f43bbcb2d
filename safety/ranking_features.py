"""Ranking features: one row per item, keyed by `item_id` with an `event_timestamp`, the shape a
Feast `FileSource` reads; the recommender joins them. The columns are a versioned contract."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

FEATURE_SCHEMA_VERSION = "1"
# Read from `items`, besides `risk_<category>`; `dup_count` joins them where dedup has run.
ITEM_COLUMNS = (
    "item_id",
    "kind",
    "updated_at",
    "model",
    "safety_version",
    "risk",
    "decision",
    "risk_topk_mean",
    "frames_over_review",
    "evidence_timestamp_s",
    "hash_match",
)
OPTIONAL_COLUMNS = ("dup_count",)


def feature_columns(item_schema: pa.Schema) -> list[str]:
    """The `items` columns the export reads from a table of this schema."""
    risks = [n for n in item_schema.names if n.startswith("risk_") and n != "risk_topk_mean"]
    return [*ITEM_COLUMNS, *risks, *(n for n in OPTIONAL_COLUMNS if n in item_schema.names)]


def feature_batch(items: pa.RecordBatch) -> pa.RecordBatch:
    """`items` rows (the columns `feature_columns` names) as feature rows."""
    n = items.num_rows
    columns = {
        "item_id": items["item_id"],
        "event_timestamp": items["updated_at"],
        "feature_schema_version": pa.array([FEATURE_SCHEMA_VERSION] * n, pa.string()),
    }
    for name in items.schema.names:
        if name not in ("item_id", "updated_at", "hash_match"):
            columns[name] = items[name]
    columns["hash_matched"] = pc.is_valid(items["hash_match"])
    columns["hash_match"] = items["hash_match"]
    return pa.RecordBatch.from_pydict(columns)
