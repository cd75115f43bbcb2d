"""The in-memory vector index of a warm search process (`Searcher(prewarm=True)`).

A Lance vector query costs about 4 ms on a 2-core machine at any table size (planning the scan,
opening the index, reading the ids), more than the search itself. A process that answers many
queries therefore copies the table version it opened into memory: each vector column into faiss
(an IVF over fp16 vectors, with as many partitions as `shoplens index` gives Lance's index, from
ANN_MIN_ROWS vectors; an exact inner-product scan below), keyed by the rows' offsets in that
version, and the result and filter columns into one Arrow table (`Searcher`). The table stays the
only store: nothing here is written anywhere, and one-shot queries (the CLI) go to Lance.
"""

from __future__ import annotations

import math

import numpy as np

from pipelines.indexes import ANN_MIN_ROWS, ivf_partitions

TRAINING_ROWS_PER_PARTITION = 50  # faiss warns below 39
FILTER_CACHE = 64  # filters whose allowed rows are kept, newest last


class MemoryIndex:
    """One vector column, keyed by row offset, searched by inner product on unit vectors (cosine)."""

    def __init__(self, column):
        """`column`: the column's Arrow values in offset order (fixed-size float lists, null for a
        row without a vector). Added a chunk at a time: at a million rows of 512, a second 2 GB
        array would cost seconds of page faults alone."""
        import faiss

        present = column.is_valid().to_numpy(zero_copy_only=False)
        self.size, dim = int(present.sum()), column.type.list_size
        self.quantizer = faiss.IndexFlatIP(dim)  # kept: the IVF index only points at it
        if self.size < ANN_MIN_ROWS:
            self.partitions = 0
            self.index = faiss.IndexIDMap(self.quantizer)
        else:
            # fp16 codes: half the memory of the vectors, and scores within 1e-3 of exact cosines,
            # so nothing is re-ranked by full vectors.
            self.partitions = ivf_partitions(self.size)
            self.index = faiss.IndexIVFScalarQuantizer(self.quantizer, dim, self.partitions, faiss.ScalarQuantizer.QT_fp16,
                                                       faiss.METRIC_INNER_PRODUCT)
            rows = min(self.size, TRAINING_ROWS_PER_PARTITION * self.partitions)
            sample = np.sort(np.random.default_rng(0).choice(np.flatnonzero(present), rows, replace=False))
            self.index.train(unit_vectors(column.take(sample).combine_chunks()))
        first = 0
        for chunk in column.chunks:
            if chunk.null_count < len(chunk):
                offsets = first + np.flatnonzero(chunk.is_valid().to_numpy(zero_copy_only=False))
                self.index.add_with_ids(unit_vectors(chunk), offsets.astype(np.int64))
            first += len(chunk)

    def search(self, query: np.ndarray, k: int, allowed: RowSet, nprobes: int) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, cosines) of the k nearest rows among `allowed`, nearest first."""
        import faiss

        if allowed.count == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        query = np.array(query, np.float32, ndmin=2)
        faiss.normalize_L2(query)
        selector = faiss.IDSelectorBitmap(len(allowed.bitmap), faiss.swig_ptr(allowed.bitmap))
        if self.partitions:
            # A filter that lets a share s of the rows through leaves s of each partition: probing
            # nprobes / s partitions keeps as many candidates (a rare seller: every partition).
            share = min(1.0, allowed.count / self.size)
            params = faiss.SearchParametersIVF(sel=selector, nprobe=min(self.partitions, math.ceil(nprobes / share)))
        else:
            params = faiss.SearchParameters(sel=selector)
        scores, ids = self.index.search(query, k, params=params)
        found = ids[0] >= 0
        return ids[0][found], scores[0][found]


def unit_vectors(array) -> np.ndarray:
    """The non-null rows of an Arrow array of fixed-size float lists, as unit float32 vectors."""
    import faiss

    vectors = np.array(array.drop_null().flatten().to_numpy().reshape(-1, array.type.list_size), np.float32)
    faiss.normalize_L2(vectors)
    return vectors


class RowSet:
    """Row offsets as faiss takes them: a little-endian bitmap, and how many are set."""

    def __init__(self, offsets: np.ndarray, rows: int):
        mask = np.zeros(rows, bool)
        mask[offsets] = True
        self.bitmap = np.packbits(mask, bitorder="little")
        self.count = len(offsets)


class FilterBitmaps:
    """The rows each search filter lets through, from the filter columns of every row (in offset
    order), evaluated once per distinct filter with the same Arrow expression a Lance scan takes."""

    def __init__(self, columns):
        import pyarrow as pa

        self.rows = columns.num_rows
        self.columns = columns.append_column("_offset", pa.array(np.arange(self.rows, dtype=np.int64)))
        self.cache: dict = {}

    def allowed(self, filters) -> RowSet:
        if filters not in self.cache:
            if len(self.cache) >= FILTER_CACHE:
                del self.cache[next(iter(self.cache))]
            offsets = self.columns.filter(filters.expression("arrow"))["_offset"].to_numpy()
            self.cache[filters] = RowSet(offsets, self.rows)
        return self.cache[filters]
