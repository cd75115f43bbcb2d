"""Search latency and recall with ANN indexes against exact numpy search, in the same run.

    python benchmarks/search.py [--rows 100000,1000000] [--queries 200] [--dim 512]

For each size: embedding-like synthetic vectors (clusters in a 32-d latent space projected to
`dim`, plus noise: `pipelines.synthetic`) in an `items` table of the project's schema; exact
top-10 by numpy for every query (the ground truth, and numpy's single-query latency); then, per
index type, `shoplens index`'s build (`pipelines.indexes.build_indexes`, vector column only)
and, per query setting, p50/p99 latency and recall@10 of `Searcher.nearest` (the real query
path: cosine, the default filters as a prefilter). Last, the end-to-end latency of a text query
(ViT-B-32 random weights embed it, then the ANN search) in the same warm process. Prints a table
per size and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.indexes import QueryTuning, build_indexes  # noqa: E402
from pipelines.search import SearchFilters, Searcher  # noqa: E402
from pipelines.synthetic import embedding_like, synthetic_items  # noqa: E402

TEXT_MODEL = "open_clip/ViT-B-32/random-seed0"  # the provenance `Searcher` rebuilds the query encoder from
# (index type, query settings to try on it)
SETTINGS = {
    "IVF_PQ": [QueryTuning(nprobes=10, refine_factor=5), QueryTuning(nprobes=20, refine_factor=10), QueryTuning(nprobes=5, refine_factor=5)],
    "IVF_HNSW_SQ": [QueryTuning(nprobes=1, refine_factor=1, ef=64), QueryTuning(nprobes=2, refine_factor=1, ef=64), QueryTuning(nprobes=3, refine_factor=1, ef=128)],
}
K = 10


def latencies_ms(run, queries) -> tuple[np.ndarray, list]:
    run(queries[0])  # warm-up
    times, results = [], []
    for q in queries:
        started = time.perf_counter()
        results.append(run(q))
        times.append((time.perf_counter() - started) * 1000)
    return np.array(times), results


def bare_query(searcher: Searcher, query: np.ndarray, tuning: QueryTuning) -> list:
    builder = searcher.table.search(query, vector_column_name="vector").distance_type("cosine")
    return builder.nprobes(tuning.nprobes).refine_factor(tuning.refine_factor).ef(tuning.ef).select(["item_id", "_distance"]).limit(K).to_list()


def exact_numpy(vectors: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, list[set]]:
    def top(q):
        scores = vectors @ q
        best = np.argpartition(-scores, K)[:K]
        return set(best[np.argsort(-scores[best])].tolist())

    return latencies_ms(top, queries)


def measure(rows: int, dim: int, queries: int, folder: Path, types: list[str]) -> dict:
    vectors = embedding_like(rows, dim)
    query_vectors = embedding_like(queries, dim, sample=2)
    numpy_ms, truth = exact_numpy(vectors, query_vectors)
    import lancedb

    db = str(folder / f"search-{rows}")
    table = lancedb.connect(db).create_table("items", synthetic_items(vectors[:0], model=TEXT_MODEL))
    for start in range(0, rows, 100_000):  # in large batches: every write is a version
        table.add(synthetic_items(vectors[start : start + 100_000], model=TEXT_MODEL, first=start))
    del vectors
    report = {"rows": rows, "dim": dim, "queries": queries, "numpy_exact_p50_ms": round(float(np.median(numpy_ms)), 2), "indexes": []}
    print(f"\n{rows:,} x {dim}: exact numpy p50 {report['numpy_exact_p50_ms']} ms a query", flush=True)
    searcher = None
    for index_type in types:
        summary = build_indexes(db, index_type, min_rows=1, log=lambda line: print(line, file=sys.stderr), columns=("vector",))
        built = {"type": index_type, "build_s": summary["vector_indexes"]["vector"]["seconds"], "all_indexes_s": summary["seconds"], "settings": []}
        print(f"{index_type}: vector index built in {built['build_s']} s (with scalar and full-text indexes {built['all_indexes_s']} s)", flush=True)
        searcher = Searcher(db, device="cpu")
        for tuning in SETTINGS[index_type]:
            searcher.tuning = tuning
            ms, hits = latencies_ms(lambda q: searcher.nearest(q, K, SearchFilters()), query_vectors)
            # The index alone: no filter, only item ids (what the prefilter and metadata columns cost).
            core_ms, _ = latencies_ms(lambda q: bare_query(searcher, q, tuning), query_vectors)
            recall = np.mean([len({int(h["item_id"][1:]) for h in found} & exact) / K for found, exact in zip(hits, truth)])
            row = {"nprobes": tuning.nprobes, "refine_factor": tuning.refine_factor, "ef": tuning.ef,
                   "recall_at_10": round(float(recall), 4), "p50_ms": round(float(np.median(ms)), 2),
                   "p99_ms": round(float(np.percentile(ms, 99)), 2), "index_only_p50_ms": round(float(np.median(core_ms)), 2),
                   "speedup_vs_numpy": round(float(np.median(numpy_ms) / np.median(ms)), 1)}
            built["settings"].append(row)
            print(f"  nprobes {tuning.nprobes:>3} refine {tuning.refine_factor:>3} ef {tuning.ef:>4}: recall@10 {row['recall_at_10']:.4f}"
                  f"  p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  {row['speedup_vs_numpy']}x numpy"
                  f"  (index alone p50 {row['index_only_p50_ms']:.2f} ms)", flush=True)
        report["indexes"].append(built)
    searcher.tuning = QueryTuning()
    searcher.by_text("warm up the encoder", K)
    ms, _ = latencies_ms(lambda q: searcher.by_text(q, K), [f"red running shoe size {n}" for n in range(50)])
    report["text_query_p50_ms"] = round(float(np.median(ms)), 2)
    report["text_query_p99_ms"] = round(float(np.percentile(ms, 99)), 2)
    print(f"text query, embed (ViT-B-32) + search with the last index: p50 {report['text_query_p50_ms']} ms, p99 {report['text_query_p99_ms']} ms")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="100000,1000000", help="comma-separated table sizes")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--types", default=",".join(SETTINGS), help="index types to compare")
    parser.add_argument("--dir", type=Path, default=None, help="where the tables go [default: a temp folder]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        reports = [measure(int(n), args.dim, args.queries, Path(folder), args.types.split(",")) for n in args.rows.split(",")]
    print(json.dumps({"benchmark": "search", "results": reports}))


if __name__ == "__main__":
    main()
