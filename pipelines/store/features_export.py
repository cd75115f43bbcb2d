"""`shoplens features export`: the items table's ranking features, streamed into one Parquet file."""

from __future__ import annotations

from pathlib import Path

from shoplens.pipelines.store.database import ItemStore
from shoplens.pipelines.store.schemas import ITEMS, items_schema
from shoplens.safety.ranking_features import FEATURE_SCHEMA_VERSION, feature_batch, feature_columns


def export_features(db: str, out: Path, batch_rows: int = 65_536) -> dict:
    """Writes one row per item to `out`, a batch at a time: memory stays flat however large the
    table. The file appears whole or not at all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = ItemStore(db)
    stored_schema = store.schema(ITEMS)
    # A table from an earlier version lacks some columns (until its next ingest adds them): they
    # are exported null, typed as the current schema has them.
    current = items_schema(stored_schema.field("vector").type.list_size, [])
    columns = feature_columns(stored_schema)
    schema = pa.schema([stored_schema.field(c) if c in stored_schema.names else current.field(c) for c in columns])
    stored = [c for c in columns if c in stored_schema.names]
    levels = store.code_levels()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    rows = 0
    try:
        with pq.ParquetWriter(partial, feature_batch(pa.RecordBatch.from_pylist([], schema=schema), levels).schema) as writer:
            for batch in store.scan(ITEMS, stored, batch_rows):
                whole = [batch[c] if c in stored else pa.nulls(batch.num_rows, schema.field(c).type) for c in columns]
                writer.write_batch(feature_batch(pa.RecordBatch.from_arrays(whole, schema=schema), levels))
                rows += batch.num_rows
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return {"command": "features export", "db": db, "out": str(out), "rows": rows, "feature_schema_version": FEATURE_SCHEMA_VERSION}
