"""Semantic IDs (`shoplens.encoders.codes`): fit and assign time, how distinct and how faithful the
codes are, and how well shared code prefixes find neighbours, against exact search, in one run.

    python benchmarks/codes.py [--sizes 100000 1000000] [--levels 3] [--codebook-size 256] [--queries 200]

For each size: the search benchmark's embedding-like vectors (512-d, `benchmarks/synthetic.py`).
Fit: residual-quantisation codebooks (k-means per level, faiss, on at most 256 vectors a code);
assign: every vector coded (exact nearest centroids, numpy). Figures: the share of items whose full
code no other item has; the mean cosine between a vector and its reconstruction (the sum of its
codes' centroids); and recall@10 of "candidates sharing the query's first p codes, ranked by exact
cosine" against exact top-10 over all rows, with the candidates' share of the table (the work it
saves), for p = 1 .. levels. Queries are other draws from the same space.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.synthetic import embedding_like  # noqa: E402
from shoplens.encoders.codes import Codebooks  # noqa: E402


def prefix_recall(vectors: np.ndarray, codes: np.ndarray, queries: np.ndarray, books: Codebooks, k: int = 10) -> list[dict]:
    """For each prefix length: recall@k of ranking the rows that share the query's code prefix,
    and the mean share of rows that are candidates."""
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :k]
    query_codes = books.assign(queries)
    out = []
    for length in range(1, books.levels + 1):
        found, candidates = 0, 0
        for q, query in enumerate(queries):
            rows = np.flatnonzero((codes[:, :length] == query_codes[q, :length]).all(axis=1))
            candidates += len(rows)
            best = rows[np.argsort(-(vectors[rows] @ query))[:k]]
            found += len(set(best.tolist()) & set(exact[q].tolist()))
        out.append(
            {
                "prefix": length,
                "recall_at_10": round(found / (k * len(queries)), 4),
                "candidate_share": round(candidates / len(queries) / len(vectors), 5),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--codebook-size", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()

    runs = []
    for size in args.sizes:
        vectors = embedding_like(size)
        queries = embedding_like(args.queries, sample=2)
        started = time.perf_counter()
        books = Codebooks.fit(vectors, args.levels, args.codebook_size, "synthetic", "benchmark")
        fit_s = time.perf_counter() - started
        started = time.perf_counter()
        codes = books.assign(vectors)
        assign_s = time.perf_counter() - started
        _, first, counts = np.unique(codes, axis=0, return_index=True, return_counts=True)
        unique = float((counts == 1).sum() / size)
        rebuilt = books.reconstruct(codes)
        cosine = float(((rebuilt * vectors).sum(axis=1) / np.linalg.norm(rebuilt, axis=1)).mean())
        run = {
            "rows": size,
            "fit_s": round(fit_s, 2),
            "assign_s": round(assign_s, 2),
            "assign_per_s": round(size / assign_s),
            "unique_full_code_share": round(unique, 4),
            "reconstruction_cosine": round(cosine, 4),
            "prefix_search": prefix_recall(vectors, codes, queries, books),
        }
        runs.append(run)
        print(
            f"{size:>9,} vectors: fit {fit_s:6.1f} s, assign {assign_s:5.1f} s ({run['assign_per_s']:,}/s); "
            f"{unique:.1%} have a code no other has; reconstruction cosine {cosine:.3f}"
        )
        for p in run["prefix_search"]:
            print(
                f"    share the first {p['prefix']} code(s): recall@10 {p['recall_at_10']:.3f} from {p['candidate_share']:.3%} of the rows"
            )
    print(json.dumps({"benchmark": "codes", "levels": args.levels, "codebook_size": args.codebook_size, "runs": runs}))


if __name__ == "__main__":
    main()
