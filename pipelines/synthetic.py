"""Synthetic `items` rows whose vectors have the structure of real embeddings, for the search
benchmark and the index tests: clusters in a low-dimensional latent space, projected to the
embedding size, plus small noise. (Isotropic noise around a few centres would make every
neighbour equidistant, and recall would then measure nothing.)"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from pipelines.store import UNSCORED, items_schema
from safety.policy import load_policy

KINDS = ("product", "video", "live")


def embedding_like(n: int, dim: int = 512, seed: int = 0, latent: int = 32, clusters: int = 2000, sample: int = 1) -> np.ndarray:
    """n L2-normalised float32 vectors. The same `seed` gives the same space (centres and
    projection); `sample` draws other points (queries) from it."""
    space = np.random.default_rng(seed)
    centres = space.standard_normal((clusters, latent), dtype=np.float32)
    projection = space.standard_normal((latent, dim), dtype=np.float32) / np.sqrt(latent)
    rng = np.random.default_rng([seed, sample])
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # in chunks: bounded memory at a million rows
        m = min(100_000, n - start)
        z = centres[rng.integers(0, clusters, m)] + 0.35 * rng.standard_normal((m, latent), dtype=np.float32)
        x = z @ projection + 0.03 * rng.standard_normal((m, dim), dtype=np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def synthetic_items(vectors: np.ndarray, text_vectors: np.ndarray | None = None, model: str = "synthetic",
                    categories: int = 20, sellers: int = 100, first: int = 0) -> pa.Table:
    """`items` rows (the project's schema) for the given vectors: item ids `i{n:07d}`, kinds,
    categories `cat{n}` and sellers `s{n}` cycling through the rows, titles naming them."""
    n, dim = vectors.shape
    numbers = np.arange(first, first + n)
    flat = lambda v: pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(v, np.float32).reshape(-1)), dim)  # noqa: E731
    columns = {
        "item_id": [f"i{k:07d}" for k in numbers],
        "kind": [KINDS[k % len(KINDS)] for k in numbers],
        "title": [f"item {k} in category {k % categories}" for k in numbers],
        "category": [f"cat{k % categories}" for k in numbers],
        "seller_id": [f"s{k % sellers}" for k in numbers],
        "status": ["ok"] * n,
        "vector": flat(vectors),
        "text_vector": flat(vectors if text_vectors is None else text_vectors),
        "model": [model] * n,
        "updated_at": [dt.datetime.now(dt.timezone.utc)] * n,
        "decision": [UNSCORED] * n,
    }
    schema = items_schema(dim, load_policy().names)
    return pa.table({f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in schema}, schema=schema)
