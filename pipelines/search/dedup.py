"""`shoplens dedup`: groups items whose visual vectors are near-identical (re-uploads, re-encoded
or resized copies of one photo) and stores each item's group in `items.dup_group` (the group's
smallest item_id) and `items.dup_count` (the group's size; 1 for an item with no duplicate).

Pairs come from a blocked matrix product over the stored vectors (exact; memory of one block x n
scores at a time; about n^2 x dim flops, so minutes at a few hundred thousand items on 2 cores);
groups are the connected components of those pairs (union-find), so a chain of near-copies forms
one group. Rows without a vector (failed items) get nulls.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from shoplens.pipelines.store.database import ItemStore, StoreError
from shoplens.pipelines.store.schemas import ITEMS

DEFAULT_THRESHOLD = 0.97  # cosine; a JPEG re-encoding or resize of a photo stays above it
BLOCK_ROWS = 2048


def near_duplicate_pairs(vectors: np.ndarray, threshold: float, block: int = BLOCK_ROWS) -> np.ndarray:
    """(i, j) pairs with i < j whose L2-normalised vectors have cosine >= threshold."""
    pairs = []
    for start in range(0, len(vectors), block):
        scores = vectors[start : start + block] @ vectors[start:].T  # only j >= this block: each pair once
        rows, cols = np.nonzero(scores >= threshold)
        keep = cols > rows  # cols are offset by `start`, like rows: drop i == j and pairs below the diagonal
        pairs.append(np.stack([rows[keep] + start, cols[keep] + start], axis=1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find: the root index of each of n nodes joined by `pairs`."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = parent[i]
        return i

    for i, j in pairs:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([root(i) for i in range(n)])


def dedup(db: str, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Finds near-duplicate groups among the embedded items and stores them; returns the summary."""
    if not 0.0 < threshold <= 1.0:
        raise StoreError(f"--threshold must be in (0, 1], not {threshold}")
    store = ItemStore(db)
    dim = store.schema(ITEMS).field("vector").type.list_size
    started = time.perf_counter()
    table = store.items(dim, store.policy()[0].names)  # adds dup_* to an older table
    rows = store.read(ITEMS, ["item_id", "vector"])
    embedded = rows.filter(rows["vector"].is_valid())
    ids = np.array(embedded["item_id"].to_pylist(), dtype=object)
    order = np.argsort(ids)  # sorted ids: a component's smallest index is its smallest item_id
    ids = ids[order]
    vectors = np.stack(embedded["vector"].to_numpy(zero_copy_only=False))[order] if len(ids) else np.zeros((0, 1), np.float32)
    pairs = near_duplicate_pairs(vectors.astype(np.float32), threshold)
    roots = components(len(ids), pairs)
    sizes = np.bincount(roots, minlength=len(ids))[roots]
    failed = rows.filter(rows["vector"].is_null())["item_id"]
    store.update_columns(
        table,
        pa.table(
            {
                "item_id": pa.concat_arrays([pa.array(ids.tolist(), pa.string()), failed.combine_chunks()]),
                "dup_group": pa.concat_arrays([pa.array(ids[roots].tolist(), pa.string()), pa.nulls(len(failed), pa.string())]),
                "dup_count": pa.concat_arrays([pa.array(sizes, pa.int32()), pa.nulls(len(failed), pa.int32())]),
            }
        ),
    )
    grouped = sizes > 1
    return {
        "command": "dedup",
        "db": db,
        "threshold": threshold,
        "items": len(rows),
        "embedded": len(ids),
        "groups": len(np.unique(roots[grouped])),
        "items_in_groups": int(grouped.sum()),
        "seconds": round(time.perf_counter() - started, 2),
    }
