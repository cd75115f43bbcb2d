"""Semantic IDs: hierarchical discrete codes of embeddings by residual quantisation. Level 0 is
the nearest of K coarse centroids; each next level codes what the levels before left (the
residual). Codes are cheap to store and join, and items that share a prefix are alike.

Fitting runs k-means per level (faiss, seeded); assigning is an exact nearest-centroid search in
numpy, so a stored codebook gives the same codes on every machine.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

ASSIGN_ROWS = 8192  # vectors coded at a time: [rows, K] distances stay small


@dataclass(frozen=True)
class Codebooks:
    centroids: np.ndarray  # float32 [levels, size, dim]
    model: str  # the embedding model whose vectors they code
    version: str

    @property
    def levels(self) -> int:
        return self.centroids.shape[0]

    @property
    def size(self) -> int:
        return self.centroids.shape[1]

    @property
    def dim(self) -> int:
        return self.centroids.shape[2]

    @classmethod
    def fit(cls, vectors: np.ndarray, levels: int, size: int, model: str, version: str, seed: int = 0, iterations: int = 20) -> Codebooks:
        """Codebooks of `levels` x `size` centroids fitted on `vectors` [N, D] (N >= size)."""
        import faiss

        vectors = np.ascontiguousarray(vectors, np.float32)
        if levels < 1 or size < 2:
            raise ValueError(f"codebooks need at least 1 level of at least 2 codes, not {levels} of {size}")
        if len(vectors) < size:
            raise ValueError(f"fitting {size} codes a level needs at least {size} vectors, and {len(vectors)} are stored")
        residual, books = vectors.copy(), []
        for level in range(levels):
            kmeans = faiss.Kmeans(vectors.shape[1], size, niter=iterations, seed=seed + level, max_points_per_centroid=256)
            kmeans.train(residual)
            books.append(kmeans.centroids.astype(np.float32))
            for start in range(0, len(residual), ASSIGN_ROWS):  # in place, a chunk at a time: memory stays at one copy
                chunk = residual[start : start + ASSIGN_ROWS]
                chunk -= books[-1][_nearest(chunk, books[-1])]
        return cls(np.stack(books), model, version)

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """Codes int32 [N, levels], coarse to fine, of finite `vectors` [N, D]."""
        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"these codebooks code {self.dim}-d vectors, not {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise ValueError("a vector to code is not finite")
        codes = np.empty((len(vectors), self.levels), np.int32)
        for start in range(0, len(vectors), ASSIGN_ROWS):
            residual = vectors[start : start + ASSIGN_ROWS].copy()
            for level, book in enumerate(self.centroids):
                codes[start : start + len(residual), level] = nearest = _nearest(residual, book)
                residual -= book[nearest]
        return codes

    def reconstruct(self, codes: np.ndarray) -> np.ndarray:
        """The vectors [N, D] that `codes` [N, levels] stand for: the sum of their centroids."""
        codes = np.asarray(codes, np.int64).reshape(-1, self.levels)
        return sum(self.centroids[level][codes[:, level]] for level in range(self.levels))

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, self.centroids, allow_pickle=False)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, model: str, version: str) -> Codebooks:
        return cls(np.load(io.BytesIO(data), allow_pickle=False), model, version)


def _nearest(vectors: np.ndarray, book: np.ndarray) -> np.ndarray:
    """The index of the nearest centroid (squared L2) of each vector; ties go to the lower index."""
    distances = (book * book).sum(axis=1)[None, :] - 2.0 * (vectors @ book.T)  # |v|^2 is the same for every centroid
    return np.argmin(distances, axis=1).astype(np.int32)
