"""Search latency and recall with ANN indexes against exact numpy search, in the same run.

    python benchmarks/search.py [--rows 100000,1000000] [--queries 200] [--dim 512]

For each size: embedding-like synthetic vectors (clusters in a 32-d latent space projected to
`dim`, plus noise: `pipelines.synthetic`) in an `items` table of the project's schema, with a
moderated catalog's mix of decisions (2% blocked); exact top-10 by numpy for every query, over
every row and over the rows the default filters let through (the ground truths, and numpy's
single-query latency); then, per index type, `shoplens index`'s build
(`pipelines.indexes.build_indexes`, vector column only) and, per query setting in a warm
process (the index prewarmed), p50/p99 latency and recall@10 of three things: the index alone
(the ids of the 10 nearest, what numpy's figure computes too), the same with the default
filters as a prefilter, and `Searcher.nearest` (the real query path: the filters and the result
columns). Last, the end-to-end latency of a text query (ViT-B-32 random weights embed it, then
the ANN search). Prints the figures and one JSON line.
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
from pipelines.synthetic import embedding_like, mixed_decisions, synthetic_items  # noqa: E402

TEXT_MODEL = "open_clip/ViT-B-32/random-seed0"  # the provenance `Searcher` rebuilds the query encoder from
# (index type, query settings to try on it)
SETTINGS = {
    # refine 0: ids ranked by the quantised distances alone; the default (1) makes the scores exact.
    "IVF_SQ": [QueryTuning(nprobes=5, refine_factor=0), QueryTuning(nprobes=5), QueryTuning(nprobes=10), QueryTuning(nprobes=20)],
    "IVF_PQ": [QueryTuning(nprobes=10, refine_factor=5), QueryTuning(nprobes=20, refine_factor=10)],
    "IVF_HNSW_SQ": [QueryTuning(nprobes=1, ef=64), QueryTuning(nprobes=2, ef=64), QueryTuning(nprobes=3, ef=128)],
}
K = 10


def latencies_ms(run, queries) -> tuple[np.ndarray, list]:
    for q in queries[:5]:
        run(q)  # warm-up
    times, results = [], []
    for q in queries:
        started = time.perf_counter()
        results.append(run(q))
        times.append((time.perf_counter() - started) * 1000)
    return np.array(times), results


def ann_ids(searcher: Searcher, query: np.ndarray, filtered: bool) -> list[int]:
    """The index alone: the nearest item ids, with or without the default filters as a prefilter."""
    where = SearchFilters().expression("arrow") if filtered else None
    hits = searcher.dataset.to_table(nearest=searcher.nearest_query(query, K), columns=["item_id"], filter=where, prefilter=True)
    return [int(i[1:]) for i in hits["item_id"].to_pylist()]


def exact_numpy(vectors: np.ndarray, queries: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, list[list], list[list]]:
    """numpy's single-query latency over every row, its top 10, and its top 10 among `keep`."""
    def top(q, scores=None):
        scores = vectors @ q if scores is None else scores
        best = np.argpartition(-scores, K)[:K]
        return best[np.argsort(-scores[best])].tolist()

    ms, truth = latencies_ms(top, queries)
    return ms, truth, [top(q, np.where(keep, vectors @ q, -np.inf)) for q in queries]


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return round(float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)])), 4)


def figures(ms: np.ndarray, found, truth, numpy_ms: np.ndarray) -> dict:
    return {"recall_at_10": recall(found, truth), "p50_ms": round(float(np.median(ms)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "speedup_vs_numpy": round(float(np.median(numpy_ms) / np.median(ms)), 1)}


def measure(rows: int, dim: int, queries: int, folder: Path, types: list[str]) -> dict:
    vectors = embedding_like(rows, dim)
    query_vectors = embedding_like(queries, dim, sample=2)
    shown = mixed_decisions(np.arange(rows)) != "block"  # what the default filters let through
    numpy_ms, truth, shown_truth = exact_numpy(vectors, query_vectors, shown)
    import lancedb

    db = str(folder / f"search-{rows}")
    table = lancedb.connect(db).create_table("items", synthetic_items(vectors[:0], model=TEXT_MODEL))
    for start in range(0, rows, 100_000):  # in large batches: every write is a version
        table.add(synthetic_items(vectors[start : start + 100_000], model=TEXT_MODEL, first=start, moderated=True))
    del vectors
    report = {"rows": rows, "dim": dim, "queries": queries, "numpy_exact_p50_ms": round(float(np.median(numpy_ms)), 2), "indexes": []}
    print(f"\n{rows:,} x {dim}: exact numpy p50 {report['numpy_exact_p50_ms']} ms a query", flush=True)
    searcher = None
    for index_type in types:
        summary = build_indexes(db, index_type, min_rows=1, log=lambda line: print(line, file=sys.stderr), columns=("vector",))
        built = {"type": index_type, "build_s": summary["vector_indexes"]["vector"]["seconds"], "all_indexes_s": summary["seconds"], "settings": []}
        print(f"{index_type}: vector index built in {built['build_s']} s (with scalar and full-text indexes {built['all_indexes_s']} s)", flush=True)
        searcher = Searcher(db, device="cpu", prewarm=True)  # a warm process
        for tuning in SETTINGS[index_type]:
            searcher.tuning = tuning
            row = {"nprobes": tuning.nprobes, "refine_factor": tuning.refine_for(searcher.ann["vector"].index_type), "ef": tuning.ef}
            ms, found = latencies_ms(lambda q: ann_ids(searcher, q, filtered=False), query_vectors)
            row["index"] = figures(ms, found, truth, numpy_ms)
            ms, found = latencies_ms(lambda q: ann_ids(searcher, q, filtered=True), query_vectors)
            row["index_filtered"] = figures(ms, found, shown_truth, numpy_ms)
            ms, hits = latencies_ms(lambda q: searcher.nearest(q, K, SearchFilters()), query_vectors)
            row["searcher"] = figures(ms, [[int(h["item_id"][1:]) for h in found] for found in hits], shown_truth, numpy_ms)
            built["settings"].append(row)
            print(f"  nprobes {row['nprobes']:>3} refine {row['refine_factor']:>3} ef {row['ef']:>4}:", flush=True)
            for part, label in (("index", "index alone, ids"), ("index_filtered", "+ default filters"), ("searcher", "Searcher.nearest")):
                f = row[part]
                print(f"    {label:<18} recall@10 {f['recall_at_10']:.4f}  p50 {f['p50_ms']:6.2f} ms  p99 {f['p99_ms']:6.2f} ms"
                      f"  {f['speedup_vs_numpy']:>6}x numpy", flush=True)
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
    parser.add_argument("--types", default="IVF_SQ,IVF_PQ", help=f"index types to compare, of {','.join(SETTINGS)}")
    parser.add_argument("--dir", type=Path, default=None, help="where the tables go [default: a temp folder]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        reports = [measure(int(n), args.dim, args.queries, Path(folder), args.types.split(",")) for n in args.rows.split(",")]
    print(json.dumps({"benchmark": "search", "results": reports}))


if __name__ == "__main__":
    main()
