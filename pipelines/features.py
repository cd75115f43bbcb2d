"""`shoplens features export`: the items table's ranking features, streamed into one Parquet file."""

from __future__ import annotations

from pathlib import Path

from pipelines.store import ITEMS, ItemStore
from safety.features import FEATURE_SCHEMA_VERSION, feature_batch, feature_columns


class FeaturesError(ValueError):
    """Nothing to export (a usage error: exit code 2)."""


def export_features(db: str, out: Path, batch_rows: int = 65_536) -> dict:
    """Writes one row per item to `out`, a batch at a time: memory stays flat however large the
    table. The file appears whole or not at all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = ItemStore(db).existing(ITEMS)
    if table is None:
        raise FeaturesError(f"{db}: no {ITEMS!r} table; run `shoplens ingest` first")
    columns = feature_columns(table.schema)
    empty = pa.RecordBatch.from_pylist([], schema=pa.schema([table.schema.field(c) for c in columns]))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    rows = 0
    with pq.ParquetWriter(partial, feature_batch(empty).schema) as writer:
        for batch in table.to_lance().to_batches(columns=columns, batch_size=batch_rows):
            writer.write_batch(feature_batch(batch))
            rows += batch.num_rows
    partial.replace(out)
    return {"command": "features export", "db": db, "out": str(out), "rows": rows, "feature_schema_version": FEATURE_SCHEMA_VERSION}
