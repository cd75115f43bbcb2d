"""`shoplens codes fit` and `codes assign`: semantic IDs (encoders.codes) of the stored items.

`fit` learns a new version of the codebooks from the stored item vectors and keeps every earlier
version (codes made with it stay readable: `codes_version` names it); `assign` codes every stored
item with the newest. An ingest codes the items it writes with the newest codebooks of its model.
"""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pyarrow as pa

from shoplens.encoders.codes import Codebooks
from shoplens.pipelines.store.database import ItemStore, StoreError
from shoplens.pipelines.store.schemas import CODE_FIELDS, ITEMS

FETCH_ROWS = 65_536


class CodesError(StoreError):
    """Codebooks that cannot be fitted or used as asked (exit 2)."""


def fit_codes(db: str, levels: int = 3, codebook_size: int = 256, seed: int = 0) -> dict:
    """Fits and stores a new version of the codebooks on every stored item vector."""
    started = time.perf_counter()
    if levels < 1 or codebook_size < 2:  # refused before any vector is read
        raise CodesError(f"codes need --levels >= 1 and --codebook-size >= 2, not {levels} and {codebook_size}")
    store = ItemStore(db)
    model = store.model()  # the one model of the table's vectors (a StoreError for mixed ones)
    vectors = _stored_vectors(store) if model is not None else np.zeros((0, 0), np.float32)
    if len(vectors) < codebook_size:
        raise CodesError(
            f"{db}: fitting {codebook_size} codes a level needs at least {codebook_size} embedded items, and {len(vectors)} are stored; "
            "ingest more, or pass a smaller --codebook-size"
        )
    version = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S.%fZ}-{levels}x{codebook_size}"
    books = Codebooks.fit(vectors, levels, codebook_size, model, version, seed)
    store.save_codebooks(books, len(vectors))
    unique = len(np.unique(books.assign(vectors), axis=0)) / len(vectors)
    return {
        "command": "codes fit",
        "db": db,
        "codes_version": version,
        "model": model,
        "levels": levels,
        "codebook_size": codebook_size,
        "fitted_on": len(vectors),
        "unique_code_share": round(unique, 4),
        "next": f"stored items keep their codes until `shoplens codes assign --db {db}` codes them with this version",
        "seconds": round(time.perf_counter() - started, 3),
    }


def assign_codes(db: str) -> dict:
    """Codes every stored item with the newest codebooks (an item without a vector: null codes)."""
    started = time.perf_counter()
    store = ItemStore(db)
    books = store.codebooks()
    if books is None:
        raise CodesError(f"{db}: no codebooks yet: run `shoplens codes fit --db {db}` first")
    model = store.model()
    if model is not None and books.model != model:
        raise CodesError(f"{db}: the codebooks code {books.model} vectors, but the items are {model}: run `shoplens codes fit` again")
    table = store.items(books.dim, [])
    coded = 0
    for batch in store.scan(ITEMS, ["item_id", "vector", "updated_at"], FETCH_ROWS):
        rows = pa.table({"item_id": batch["item_id"], **item_codes(books, batch["vector"])})
        # Only where the item is still the one read: one re-ingested meanwhile has its own codes.
        store.update_columns(table, rows.append_column("updated_at", batch["updated_at"]), unchanged_since="updated_at")
        coded += int(rows["semantic_id"].is_valid().to_numpy(zero_copy_only=False).sum())
    return {
        "command": "codes assign",
        "db": db,
        "codes_version": books.version,
        "coded": coded,
        "seconds": round(time.perf_counter() - started, 3),
    }


def item_codes(books: Codebooks | None, column) -> dict[str, pa.Array]:
    """`semantic_id` and `codes_version` columns for items whose vectors are `column` (an Arrow
    fixed-size list column; a null or non-finite vector: no codes)."""
    types = {field.name: field.type for field in CODE_FIELDS}
    present, vectors = vector_rows(column)
    ids: list = [None] * len(column)
    if books is not None and len(present):
        finite = np.isfinite(vectors).all(axis=1)
        for i, code in zip(present[finite].tolist(), books.assign(vectors[finite]).tolist()):
            ids[i] = code
    version = [books.version if books is not None and code is not None else None for code in ids]
    return {"semantic_id": pa.array(ids, types["semantic_id"]), "codes_version": pa.array(version, types["codes_version"])}


def vector_rows(column) -> tuple[np.ndarray, np.ndarray]:
    """(the rows that have a vector, their vectors float32 [n, D]) of an Arrow vector column,
    without a Python object per number."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    present = np.flatnonzero(array.is_valid().to_numpy(zero_copy_only=False))
    return present, array.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(
        len(present), array.type.list_size
    )


def _stored_vectors(store: ItemStore) -> np.ndarray:
    parts = [vector_rows(batch["vector"])[1] for batch in store.scan(ITEMS, ["vector"], FETCH_ROWS)]
    parts = [p[np.isfinite(p).all(axis=1)] for p in parts if len(p)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
