"""Ranking features: one row per item, keyed by `item_id` with an `event_timestamp`, the shape a
Feast `FileSource` reads; the recommender joins them. The columns are a versioned contract."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

FEATURE_SCHEMA_VERSION = "2"  # 2: semantic_id_<level> and codes_version
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
OPTIONAL_COLUMNS = ("dup_count", "semantic_id", "codes_version")


def feature_columns(item_schema: pa.Schema) -> list[str]:
    """The `items` columns the export reads from a table of this schema."""
    risks = [n for n in item_schema.names if n.startswith("risk_") and n != "risk_topk_mean"]
    return [*ITEM_COLUMNS, *risks, *(n for n in OPTIONAL_COLUMNS if n in item_schema.names)]


def feature_batch(items: pa.RecordBatch, code_levels: int = 0) -> pa.RecordBatch:
    """`items` rows (the columns `feature_columns` names) as feature rows; an item's semantic ID
    as `semantic_id_0` .. `semantic_id_<code_levels - 1>` (null past its own levels)."""
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
    if "semantic_id" in items.schema.names:  # one column a level: what a feature store joins on
        ids, version = columns.pop("semantic_id").to_pylist(), columns.pop("codes_version")
        for level in range(code_levels):
            columns[f"semantic_id_{level}"] = pa.array([c[level] if c is not None and len(c) > level else None for c in ids], pa.int32())
        if code_levels:
            columns["codes_version"] = version
    return pa.RecordBatch.from_pydict(columns)
