"""Search latency and recall with ANN indexes against exact numpy search, in the same run.

    python benchmarks/search.py [--rows 100000,1000000] [--queries 200] [--dim 512]

For each size: embedding-like synthetic vectors (clusters in a 32-d latent space projected to
`dim`, plus noise: `benchmarks/synthetic.py`) in an `items` table of the project's schema, with a
moderated catalog's mix of decisions (2% blocked); exact top-10 by numpy for every query, over
every row and over the rows the default filters let through (the ground truths, and numpy's
single-query latency). Then two ways to answer, each at several query settings, with p50/p99
latency and recall@10 of three things: the index alone (the ids of the 10 nearest, what numpy's
figure computes too), the same with the default filters, and `Searcher.nearest` (the real query
path: the filters and the result columns):
- a warm process (`Searcher(db, prewarm=True)`): the vectors copied into faiss
  (`shoplens.pipelines.search.memory_index`), with its load-and-build time;
- per Lance index type, `shoplens index`'s build (`shoplens.pipelines.store.indexes.build_indexes`, vector
  column only), then Lance queries (what one-shot CLI queries run), the index prewarmed.
Last, the end-to-end latency of a text query in the warm process (ViT-B-32 with random weights
embeds it, then the search). Prints the figures and one JSON line.
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

from benchmarks.synthetic import embedding_like, mixed_decisions, synthetic_items  # noqa: E402
from shoplens.pipelines.search.memory_index import RowSet  # noqa: E402
from shoplens.pipelines.search.searcher import Searcher, SearchFilters  # noqa: E402
from shoplens.pipelines.store.indexes import QueryTuning, build_indexes  # noqa: E402

TEXT_MODEL = "open_clip/ViT-B-32/random-seed0"  # the provenance `Searcher` rebuilds the query encoder from
# (index type, query settings to try on it)
SETTINGS = {
    # refine 0: ids ranked by the quantised distances alone; the default (1) makes the scores exact.
    "IVF_SQ": [QueryTuning(nprobes=5, refine_factor=0), QueryTuning(nprobes=5), QueryTuning(nprobes=10), QueryTuning(nprobes=20)],
    "IVF_PQ": [QueryTuning(nprobes=10, refine_factor=5), QueryTuning(nprobes=20, refine_factor=10)],
    "IVF_HNSW_SQ": [QueryTuning(nprobes=1, ef=64), QueryTuning(nprobes=2, ef=64), QueryTuning(nprobes=3, ef=128)],
}
MEMORY_NPROBES = (5, 10, 20)
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


def lance_ids(searcher: Searcher, query: np.ndarray, filtered: bool) -> list[int]:
    """Lance's index alone: the nearest item ids, with or without the default filters as a prefilter."""
    where = SearchFilters().expression("arrow") if filtered else None
    hits = searcher.snapshot.nearest(searcher.nearest_query(query, K), ["item_id"], where, with_distance=False)
    return [int(i[1:]) for i in hits["item_id"].to_pylist()]


def memory_ids(searcher: Searcher, query: np.ndarray, allowed: RowSet) -> list[int]:
    """The in-memory index alone: the offsets of the nearest rows (item i is at offset i)."""
    return searcher.memory.indexes["vector"].search(query, K, allowed, searcher.tuning.nprobes)[0].tolist()


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
    return {
        "recall_at_10": recall(found, truth),
        "p50_ms": round(float(np.median(ms)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "speedup_vs_numpy": round(float(np.median(numpy_ms) / np.median(ms)), 1),
    }


def compare(label: str, searcher: Searcher, ids, filtered_ids, queries, truth, shown_truth, numpy_ms) -> dict:
    """The index alone, with the default filters, and `Searcher.nearest`; printed as they come."""
    row = {}
    ms, found = latencies_ms(ids, queries)
    row["index"] = figures(ms, found, truth, numpy_ms)
    ms, found = latencies_ms(filtered_ids, queries)
    row["index_filtered"] = figures(ms, found, shown_truth, numpy_ms)
    ms, hits = latencies_ms(lambda q: searcher.nearest(q, K, SearchFilters()), queries)
    row["searcher"] = figures(ms, [[int(h["item_id"][1:]) for h in found] for found in hits], shown_truth, numpy_ms)
    print(f"  {label}:", flush=True)
    for part, name in (("index", "index alone, ids"), ("index_filtered", "+ default filters"), ("searcher", "Searcher.nearest")):
        f = row[part]
        print(
            f"    {name:<18} recall@10 {f['recall_at_10']:.4f}  p50 {f['p50_ms']:6.2f} ms  p99 {f['p99_ms']:6.2f} ms"
            f"  {f['speedup_vs_numpy']:>6}x numpy",
            flush=True,
        )
    return row


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
    started = time.perf_counter()
    warm = Searcher(db, device="cpu", prewarm=True)  # a warm process: the vectors copied into faiss
    report["in_memory"] = {"build_s": round(time.perf_counter() - started, 2), "settings": []}
    print(f"in memory (faiss IVF, fp16): both vector columns loaded and indexed in {report['in_memory']['build_s']} s", flush=True)
    every_row, shown_rows = RowSet(np.ones(rows, bool)), warm.memory.bitmaps.allowed(SearchFilters(), "vector")
    for nprobes in MEMORY_NPROBES:
        warm.tuning = QueryTuning(nprobes=nprobes)
        row = {
            "nprobes": nprobes,
            **compare(
                f"nprobes {nprobes}",
                warm,
                lambda q: memory_ids(warm, q, every_row),
                lambda q: memory_ids(warm, q, shown_rows),
                query_vectors,
                truth,
                shown_truth,
                numpy_ms,
            ),
        }
        report["in_memory"]["settings"].append(row)
    for index_type in types:
        summary = build_indexes(db, index_type, min_rows=1, log=lambda line: print(line, file=sys.stderr), columns=("vector",))
        built = {
            "type": index_type,
            "build_s": summary["vector_indexes"]["vector"]["seconds"],
            "all_indexes_s": summary["seconds"],
            "settings": [],
        }
        print(
            f"Lance {index_type}: vector index built in {built['build_s']} s (with scalar and full-text indexes {built['all_indexes_s']} s)",
            flush=True,
        )
        lance = Searcher(db, device="cpu")  # a one-shot query's path: Lance, its index loaded once below
        lance.snapshot.prewarm_ann_index("vector")
        for tuning in SETTINGS[index_type]:
            lance.tuning = tuning
            setting = {
                "nprobes": tuning.nprobes,
                "refine_factor": tuning.refine_for(lance.snapshot.ann_index_type("vector")),
                "ef": tuning.ef,
            }
            label = " ".join(f"{name} {value}" for name, value in setting.items())
            built["settings"].append(
                setting
                | compare(
                    label,
                    lance,
                    lambda q, lance=lance: lance_ids(lance, q, False),
                    lambda q, lance=lance: lance_ids(lance, q, True),
                    query_vectors,
                    truth,
                    shown_truth,
                    numpy_ms,
                )
            )
        report["indexes"].append(built)
    warm.tuning = QueryTuning()
    warm.by_text("warm up the encoder", K)
    ms, _ = latencies_ms(lambda q: warm.by_text(q, K), [f"red running shoe size {n}" for n in range(50)])
    report["text_query_p50_ms"] = round(float(np.median(ms)), 2)
    report["text_query_p99_ms"] = round(float(np.percentile(ms, 99)), 2)
    print(
        f"text query in the warm process, embed (ViT-B-32) + search: p50 {report['text_query_p50_ms']} ms, p99 {report['text_query_p99_ms']} ms"
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="100000,1000000", help="comma-separated table sizes")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--types", default="IVF_SQ,IVF_PQ", help=f"Lance index types to compare, of {','.join(SETTINGS)} (none: '')")
    parser.add_argument("--dir", type=Path, default=None, help="where the tables go [default: a temp folder]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        reports = [
            measure(int(n), args.dim, args.queries, Path(folder), [t for t in args.types.split(",") if t]) for n in args.rows.split(",")
        ]
    print(json.dumps({"benchmark": "search", "results": reports}))


if __name__ == "__main__":
    main()
