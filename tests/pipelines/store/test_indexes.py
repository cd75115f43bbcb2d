"""`shoplens index` on real LanceDB tables of embedding-like vectors: ANN recall against numpy,
filters under an index, small tables staying exact, and clear errors."""

import json

import lancedb
import numpy as np
import pytest
from typer.testing import CliRunner

from benchmarks.synthetic import embedding_like, synthetic_items
from shoplens.pipelines.cli import app
from shoplens.pipelines.search.searcher import Searcher, SearchFilters
from shoplens.pipelines.store.database import StoreError
from shoplens.pipelines.store.indexes import ANN_MIN_ROWS, QueryTuning, build_indexes
from shoplens.pipelines.store.schemas import ITEMS

DIM = 64


def table_of(db: str, vectors: np.ndarray):
    return lancedb.connect(db).create_table(ITEMS, synthetic_items(vectors))


def exact_top(vectors: np.ndarray, query: np.ndarray, k: int, keep: np.ndarray | None = None) -> list[int]:
    scores = vectors @ query
    if keep is not None:
        scores[~keep] = -np.inf
    return [int(i) for i in np.argsort(-scores)[:k]]


def numbers(hits) -> list[int]:
    return [int(hit["item_id"][1:]) for hit in hits]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """ANN_MIN_ROWS embedding-like vectors, every index built."""
    db = str(tmp_path_factory.mktemp("indexed") / "db")
    vectors = embedding_like(ANN_MIN_ROWS, DIM)
    table_of(db, vectors)
    return db, vectors, build_indexes(db, log=lambda line: None)


def test_index_builds_ann_scalar_and_full_text_indexes(indexed):
    db, _, summary = indexed
    assert {c: s["search"] for c, s in summary["vector_indexes"].items()} == {"vector": "ann", "text_vector": "ann"}
    built = {(index.columns[0], index.index_type) for index in lancedb.connect(db).open_table(ITEMS).list_indices()}
    assert {("title", "FTS"), ("kind", "Bitmap"), ("decision", "Bitmap"), ("category", "BTree"), ("seller_id", "BTree")} <= built
    assert {(column, kind) for column, kind in built if kind.startswith("Ivf")} == {("vector", "IvfSq"), ("text_vector", "IvfSq")}


def test_product_quantised_candidates_are_re_ranked_deeper_by_default():
    assert QueryTuning().refine_for("IvfPq") == 5 and QueryTuning().refine_for("IvfSq") == 1
    assert QueryTuning(refine_factor=0).refine_for("IvfPq") == 0 and QueryTuning(refine_factor=3).refine_for(None) == 3


def test_ann_search_recall_against_numpy(indexed):
    db, vectors, _ = indexed
    searcher = Searcher(db)  # Lance's index (a warm process searches in memory: test_memory_index.py)
    queries = embedding_like(50, DIM, sample=2)
    found = [searcher.nearest(q, 10, SearchFilters()) for q in queries]
    recall = np.mean([len(set(numbers(hits)) & set(exact_top(vectors, q, 10))) / 10 for hits, q in zip(found, queries)])
    assert recall >= 0.9
    # Scores are cosines, not the quantised distances (on another scale) the index ranks by.
    for hits, q in zip(found, queries):
        np.testing.assert_allclose([h["score"] for h in hits], vectors[numbers(hits)] @ q, atol=1e-5)


def test_filters_still_hold_under_the_index(indexed):
    db, vectors, _ = indexed
    # Every partition, and every PQ candidate re-ranked by its full vector: a prefilter keeps the
    # 83 matching rows as the only candidates, so the result is exact (a postfilter would find
    # fewer than 10 among the nearest of all rows). Training is not deterministic: no recall bound.
    searcher = Searcher(db, tuning=QueryTuning(nprobes=100, refine_factor=100))
    query = embedding_like(1, DIM, sample=3)[0]
    hits = searcher.nearest(query, 10, SearchFilters(kind="video", category="cat3"))
    assert len(hits) == 10 and {(h["kind"], h["category"]) for h in hits} == {("video", "cat3")}
    n = np.arange(len(vectors))
    keep = (n % 3 == 1) & (n % 20 == 3)  # synthetic_items: kinds cycle by 3, categories by 20
    assert set(numbers(hits)) == set(exact_top(vectors, query, 10, keep))


def test_small_table_stays_exact_and_equals_numpy(tmp_db):
    vectors = embedding_like(300, DIM)
    table_of(tmp_db, vectors)
    result = CliRunner().invoke(app, ["index", "--db", tmp_db])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["vector_indexes"]["vector"] == {"rows": 300, "index": None, "search": f"exact (fewer than {ANN_MIN_ROWS} vectors)"}
    assert not any(i.index_type.startswith("Ivf") for i in lancedb.connect(tmp_db).open_table(ITEMS).list_indices())
    query = embedding_like(1, DIM, sample=4)[0]
    hits = Searcher(tmp_db).nearest(query, 10, SearchFilters(seller_id="s7"))
    keep = np.arange(300) % 100 == 7
    assert numbers(hits) == exact_top(vectors, query, 3, keep)  # only 3 items of seller s7
    np.testing.assert_allclose([h["score"] for h in hits], np.sort(vectors[keep] @ query)[::-1], atol=1e-5)


def test_index_of_a_missing_or_empty_table_is_a_usage_error(tmp_db):
    result = CliRunner().invoke(app, ["index", "--db", tmp_db])
    assert result.exit_code == 2 and "run `shoplens ingest` first" in result.output
    table_of(tmp_db, np.zeros((0, DIM), np.float32))
    with pytest.raises(StoreError, match="no 'items' rows"):
        build_indexes(tmp_db)
    with pytest.raises(StoreError, match="unknown index type"):
        table_of(tmp_db + "2", embedding_like(10, DIM))
        build_indexes(tmp_db + "2", "IVF_MAGIC", min_rows=1)
