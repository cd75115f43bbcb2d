"""The in-memory vector index of a warm search process (`Searcher(prewarm=True)`).

A Lance vector query costs about 4 ms on a 2-core machine at any table size (planning the scan,
opening the index, reading the ids), more than the search itself. A process that answers many
queries therefore copies the table version it opened into memory: each vector column into faiss
(an IVF over fp16 vectors, with as many partitions as `shoplens index` gives Lance's index, from
ANN_MIN_ROWS vectors; an exact inner-product scan below), keyed by the rows' offsets in that
version, and the result and filter columns into one Arrow table (`MemorySnapshot`). The table stays the
only store: nothing here is written anywhere, and one-shot queries (the CLI) go to Lance.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np

from shoplens.pipelines.store.indexes import ANN_MIN_ROWS, ivf_partitions

TRAINING_ROWS_PER_PARTITION = 50  # faiss warns below 39
FILTER_CACHE = 64  # (filter, column) pairs whose allowed rows are kept, least recently used first out


class MemoryIndex:
    """One vector column, keyed by row offset, searched by inner product on unit vectors (cosine)."""

    def __init__(self, column):
        """`column`: the column's Arrow values in offset order (fixed-size float lists, null for a
        row without a vector). Added a chunk at a time: at a million rows of 512, a second 2 GB
        array would cost seconds of page faults alone."""
        import faiss

        self.present = column.is_valid().to_numpy(zero_copy_only=False)  # which rows have a vector
        self.size, dim = int(self.present.sum()), column.type.list_size
        self.quantizer = faiss.IndexFlatIP(dim)  # kept: the IVF index only points at it
        if self.size < ANN_MIN_ROWS:
            self.partitions = 0
            self.index = faiss.IndexIDMap(self.quantizer)
        else:
            # fp16 codes: half the memory of the vectors, and scores within 1e-3 of exact cosines,
            # so nothing is re-ranked by full vectors.
            self.partitions = ivf_partitions(self.size)
            self.index = faiss.IndexIVFScalarQuantizer(
                self.quantizer, dim, self.partitions, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
            )
            rows = min(self.size, TRAINING_ROWS_PER_PARTITION * self.partitions)
            sample = np.sort(np.random.default_rng(0).choice(np.flatnonzero(self.present), rows, replace=False))
            self.index.train(unit_vectors(column.take(sample).combine_chunks()))
        first = 0
        for chunk in column.chunks:
            offsets = first + np.flatnonzero(self.present[first : first + len(chunk)])
            if len(offsets):
                self.index.add_with_ids(unit_vectors(chunk), offsets.astype(np.int64))
            first += len(chunk)

    def search(self, query: np.ndarray, k: int, allowed: RowSet, nprobes: int) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, cosines) of the k nearest rows among `allowed` (rows with a vector here),
        nearest first. A zero query has no direction, so nothing is near it (as in Lance)."""
        import faiss

        query = np.array(query, np.float32, ndmin=2)
        if allowed.count == 0 or not np.isfinite(query).all() or not query.any():
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        faiss.normalize_L2(query)
        selector = faiss.IDSelectorBitmap(len(allowed.bitmap), faiss.swig_ptr(allowed.bitmap))
        if not self.partitions:
            return self._found(*self.index.search(query, k, params=faiss.SearchParameters(sel=selector)))
        # A filter that lets a share s of the rows through leaves s of each partition: probing
        # nprobes / s partitions keeps as many candidates (a rare seller: every partition).
        nprobe = min(self.partitions, math.ceil(nprobes * self.size / allowed.count))
        offsets, scores = self._found(*self.index.search(query, k, params=faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)))
        if len(offsets) < min(k, allowed.count) and nprobe < self.partitions:
            # The allowed rows sit in partitions far from the query (a filter that follows the
            # clusters, a large k): every partition, so k are found when k are allowed.
            params = faiss.SearchParametersIVF(sel=selector, nprobe=self.partitions)
            offsets, scores = self._found(*self.index.search(query, k, params=params))
        return offsets, scores

    @staticmethod
    def _found(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found = ids[0] >= 0  # faiss pads with -1 when fewer than k are found
        return ids[0][found], scores[0][found]


def unit_vectors(array) -> np.ndarray:
    """The non-null rows of an Arrow array of fixed-size float lists, as unit float32 vectors."""
    import faiss

    vectors = np.array(array.drop_null().flatten().to_numpy().reshape(-1, array.type.list_size), np.float32)
    faiss.normalize_L2(vectors)
    return vectors


class RowSet:
    """Rows (a boolean mask over offsets) as faiss takes them: a little-endian bitmap, and how many are set."""

    def __init__(self, mask: np.ndarray):
        self.bitmap = np.packbits(mask, bitorder="little")
        self.count = int(mask.sum())


class FilterBitmaps:
    """The rows each search filter lets through that have a vector in a column, from the filter
    columns of every row (in offset order): evaluated once per filter and column with the same
    Arrow expression a Lance scan takes. Safe to share between threads."""

    def __init__(self, filter_table, present: dict[str, np.ndarray]):
        import pyarrow as pa

        self.row_count, self.present = filter_table.num_rows, present
        self.filter_table = filter_table.append_column("_offset", pa.array(np.arange(self.row_count, dtype=np.int64)))
        self.cache: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def allowed(self, filters, column: str) -> RowSet:
        key = (filters, column)
        with self.lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
        mask = np.zeros(self.row_count, bool)
        mask[self.filter_table.filter(filters.expression("arrow"))["_offset"].to_numpy()] = True
        rows = RowSet(mask & self.present[column])
        with self.lock:
            self.cache[key] = rows
            if len(self.cache) > FILTER_CACHE:
                self.cache.popitem(last=False)
        return rows


class MemorySnapshot:
    """A table version in memory: an index per vector column, the result and filter columns in
    one Arrow table, and the filters' bitmaps over it."""

    def __init__(self, vector_columns: Iterable[tuple[str, object]], rows, result_columns: list[str], filter_columns: list[str]):
        """`vector_columns`: (name, Arrow column) pairs, read one at a time; `rows`: the result
        and filter columns of every row, in the same offset order."""
        self.indexes = {name: index for name, column in vector_columns if (index := MemoryIndex(column)).size}
        self.rows = rows.combine_chunks()  # one chunk: taking 10 rows from a scan's thousand chunks takes milliseconds
        self.result_columns = result_columns
        self.bitmaps = FilterBitmaps(self.rows.select(filter_columns), {name: index.present for name, index in self.indexes.items()})

    def nearest(self, query: np.ndarray, k: int, filters, column: str, nprobes: int) -> list[dict]:
        """The k nearest rows to `query` in `column` that `filters` lets through, with their cosine `score`."""
        offsets, scores = self.indexes[column].search(query, k, self.bitmaps.allowed(filters, column), nprobes)
        rows = self.rows.take(offsets).select(self.result_columns).to_pylist()
        return [{"score": round(float(score), 6), **row} for score, row in zip(scores, rows)]
