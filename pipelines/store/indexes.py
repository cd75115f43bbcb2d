"""`shoplens index`: ANN indexes on the vector columns, scalar indexes on the filter columns and a
full-text indexes on `title` and `ocr_text` (the text read in pictures), sized to the table.

Below ANN_MIN_ROWS vectors a column stays exact: brute force over a few thousand rows takes about
a millisecond, and IVF training needs thousands of rows to place its centroids. Rows written
after an index was built are searched exactly beside it until `shoplens index` runs again.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from shoplens.pipelines.store.database import ItemStore, StoreError
from shoplens.pipelines.store.schemas import ITEMS, TEXT_COLUMNS

ANN_MIN_ROWS = 5_000
VECTOR_COLUMNS = ("vector", "text_vector")
# Few distinct values: a bitmap per value; many: a B-tree.
SCALAR_INDEXES = {"kind": "BITMAP", "status": "BITMAP", "decision": "BITMAP", "category": "BTREE", "seller_id": "BTREE"}
ANN_TYPES = ("IVF_SQ", "IVF_PQ", "IVF_HNSW_SQ")
DEFAULT_PQ_REFINE = 5


@dataclass(frozen=True)
class QueryTuning:
    """Query-time knobs of an ANN index (ignored by an exact search): nprobes partitions are
    scanned; the refine_factor x k best candidates are re-ranked by their full vectors (None: at
    DEFAULT_PQ_REFINE on IVF_PQ, whose codes are too coarse to rank by, and at 1 on the others,
    which only makes the returned distances exact: quantised ones are on another scale; 0: never,
    for ids ranked by the quantised distances alone); ef is HNSW's beam. The defaults keep
    recall@10 above 0.95 on the benchmark at a million rows (`benchmarks/search.py`)."""

    nprobes: int = 10
    refine_factor: int | None = None
    ef: int = 64

    def refine_for(self, index_type: str | None) -> int:
        if self.refine_factor is not None:
            return self.refine_factor
        return DEFAULT_PQ_REFINE if index_type and "Pq" in index_type else 1


def ann_config(index_type: str, rows: int, dim: int):
    """An ANN index config sized to `rows` vectors of `dim` dimensions (cosine distance)."""
    from lancedb.index import IvfHnswSq, IvfPq, IvfSq

    if index_type == "IVF_SQ":
        # 8-bit scalar quantisation: distances close enough to exact that no re-ranking is needed,
        # a quarter of the vectors' size in memory. Partitions as for IVF_PQ.
        return IvfSq(distance_type="cosine", num_partitions=ivf_partitions(rows))
    if index_type == "IVF_PQ":
        # 8 dimensions per PQ sub-vector.
        return IvfPq(distance_type="cosine", num_partitions=ivf_partitions(rows), num_sub_vectors=max(1, dim // 8))
    if index_type == "IVF_HNSW_SQ":
        # An HNSW graph per partition: few, large partitions (about 100k rows each).
        return IvfHnswSq(distance_type="cosine", num_partitions=max(1, rows // 100_000))
    raise StoreError(f"unknown index type {index_type!r}: one of {', '.join(ANN_TYPES)}")


def ivf_partitions(rows: int) -> int:
    """About sqrt(n) partitions of sqrt(n) rows, but at least 256 rows each (fewer cannot be
    trained: LanceDB trains fewer than asked)."""
    return max(1, min(round(math.sqrt(rows)), rows // 256))


def build_indexes(
    db: str, index_type: str = "IVF_SQ", min_rows: int = ANN_MIN_ROWS, log=print, columns: tuple[str, ...] = VECTOR_COLUMNS
) -> dict:
    """Builds (or rebuilds) the indexes of the `items` table (ANN ones on `columns`); returns the JSON summary."""
    from lancedb.index import FTS

    table = ItemStore(db).existing(ITEMS)
    if table is None or table.count_rows() == 0:
        raise StoreError(f"{db}: no {ITEMS!r} rows to index; run `shoplens ingest` first")
    started = time.perf_counter()
    summary = {"command": "index", "db": db, "rows": table.count_rows(), "vector_indexes": {}}
    dim = table.schema.field("vector").type.list_size
    for column in columns:
        rows = table.count_rows(f"{column} IS NOT NULL")  # our own column names: no user text
        if rows < min_rows:
            summary["vector_indexes"][column] = {"rows": rows, "index": None, "search": f"exact (fewer than {min_rows} vectors)"}
            continue
        log(f"{column}: training {index_type} on {rows} vectors")
        column_started = time.perf_counter()
        table.create_index(column, config=ann_config(index_type, rows, dim), replace=True)
        summary["vector_indexes"][column] = {
            "rows": rows,
            "index": index_type,
            "search": "ann",
            "seconds": round(time.perf_counter() - column_started, 2),
        }
    for column, kind in SCALAR_INDEXES.items():
        table.create_scalar_index(column, index_type=kind, replace=True)
    text_columns = [c for c in TEXT_COLUMNS if c in table.schema.names]  # a table from before OCR has no ocr_text
    for column in text_columns:
        table.create_index(column, config=FTS(), replace=True)
    return summary | {
        "scalar_indexes": list(SCALAR_INDEXES),
        "fts_index": "title",
        "fts_indexes": text_columns,
        "seconds": round(time.perf_counter() - started, 2),
    }
