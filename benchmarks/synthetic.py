"""Synthetic data for benchmarks and tests: `items` rows whose vectors have the structure of real
embeddings (clusters in a low-dimensional latent space, projected to the embedding size, plus
small noise: isotropic noise around a few centres would make every neighbour equidistant, and
recall would then measure nothing), and catalogs of distinct product photos made from the
sample photos scikit-image ships."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa

from shoplens.encoders.rows import UNSCORED
from shoplens.pipelines.store.schemas import items_schema
from shoplens.safety.policy import load_policy

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


def mixed_decisions(numbers: np.ndarray) -> np.ndarray:
    """A moderated catalog's decisions, scattered pseudo-randomly by item number: 90% allow, 6%
    review, 2% unscored, 2% block. (A column of one repeated value is stored run-length encoded,
    and reading a few rows of it costs milliseconds: no real catalog looks like that.)"""
    # Knuth's multiplicative hash: its high bits (the low ones of n * odd constant mod 100 repeat every 100 items).
    bucket = (((np.asarray(numbers, np.uint64) * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)) >> np.uint64(16)) % np.uint64(100)
    return np.select([bucket < 90, bucket < 96, bucket < 98], ["allow", "review", UNSCORED], "block").astype(object)


def synthetic_items(
    vectors: np.ndarray,
    text_vectors: np.ndarray | None = None,
    model: str = "synthetic",
    categories: int = 20,
    sellers: int = 100,
    first: int = 0,
    moderated: bool = False,
) -> pa.Table:
    """`items` rows (the project's schema) for the given vectors: item ids `i{n:07d}`, kinds,
    categories `cat{n}` and sellers `s{n}` cycling through the rows, titles naming them; every
    item scored and allowed (`risk` 0.05), or with `moderated` the decisions of `mixed_decisions`."""
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
        "decision": mixed_decisions(numbers) if moderated else ["allow"] * n,
    }
    if not moderated:
        columns["risk"] = pa.array(np.full(n, 0.05, np.float32))
    schema = items_schema(dim, load_policy().names)
    return pa.table({f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in schema}, schema=schema)


def photo_variants(folder: Path, count: int, photos: list[str], side: int = 1024, min_crop: float = 0.6) -> list[tuple[str, str]]:
    """Writes `count` distinct side x side JPEGs `{n:05d}.jpg` to `folder`: random crops, flips
    and tints of the scikit-image `photos` in turn, as a catalog holds many shots of a few kinds
    of thing. Returns (file name, source photo) for each."""
    import skimage
    from PIL import Image, ImageOps

    rng = np.random.default_rng(0)
    sources = {name: Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB") for name in photos}
    made = []
    for n in range(count):
        name = photos[n % len(photos)]
        w, h = sources[name].size
        crop = rng.uniform(min_crop, 1.0)
        cw, ch = int(w * crop), int(h * crop)
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        variant = sources[name].crop((x, y, x + cw, y + ch)).resize((side, side), Image.BICUBIC)
        if n % 2:
            variant = ImageOps.mirror(variant)
        tint = Image.new("RGB", variant.size, tuple(int(c) for c in rng.integers(0, 256, 3)))
        Image.blend(variant, tint, 0.1).save(folder / f"{n:05d}.jpg", quality=90)
        made.append((f"{n:05d}.jpg", name))
    return made
