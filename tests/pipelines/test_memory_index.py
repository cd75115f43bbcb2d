"""A warm searcher's in-memory index (`Searcher(prewarm=True)`) against Lance's exact search and
numpy on real LanceDB tables: the same hits with failed rows among the vectors, the same rows per
filter as a Lance scan, and recall and rare filters under its IVF."""

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipelines.indexes import ANN_MIN_ROWS, QueryTuning
from pipelines.search import SearchFilters, Searcher
from pipelines.store import ITEMS
from pipelines.synthetic import embedding_like, synthetic_items

DIM = 64
FILTERS = [SearchFilters(), SearchFilters(include_blocked=True), SearchFilters(kind="video", category="cat3"),
           SearchFilters(seller_id="s7"), SearchFilters(seller_id="nobody"), SearchFilters(category="cat1' OR '1'='1")]


def table_with_failed_rows(db: str, rows: pa.Table, every: int):
    """A table of `rows` in which every `every`-th row failed to ingest: status error, no vectors."""
    return lancedb.connect(db).create_table(ITEMS, with_failed_rows(rows, every), on_bad_vectors="null")  # as the store writes them


def with_failed_rows(rows: pa.Table, every: int) -> pa.Table:
    """Every `every`-th row failed to ingest: status error, no vectors."""
    failed = pa.array(np.arange(rows.num_rows) % every == 0)
    for name in ("vector", "text_vector"):
        column = rows[name]
        rows = rows.set_column(rows.schema.get_field_index(name), name, pc.if_else(failed, pa.nulls(rows.num_rows, column.type), column))
    return rows.set_column(rows.schema.get_field_index("status"), "status", pc.if_else(failed, "error", rows["status"]))


def test_in_memory_hits_equal_lance_exact_search_with_failed_rows_between(tmp_db):
    vectors = embedding_like(600, DIM)
    table_with_failed_rows(tmp_db, synthetic_items(vectors, moderated=True), every=7)
    lance, warm = Searcher(tmp_db), Searcher(tmp_db, prewarm=True)
    assert warm.memory["vector"].size == 600 - 86  # the failed rows hold no vector
    for query in embedding_like(5, DIM, sample=2):
        for filters in FILTERS:
            for field in ("image", "title"):
                expected, found = lance.nearest(query, 10, filters, field), warm.nearest(query, 10, filters, field)
                assert [h | {"score": 0} for h in found] == [h | {"score": 0} for h in expected]  # the same rows, every column
                np.testing.assert_allclose([h["score"] for h in found], [h["score"] for h in expected], atol=1e-5)
                assert all(int(h["item_id"][1:]) % 7 for h in found)


def test_filter_bitmaps_hold_the_rows_a_lance_scan_keeps(tmp_db):
    table_with_failed_rows(tmp_db, synthetic_items(embedding_like(600, DIM), moderated=True), every=5)
    warm = Searcher(tmp_db, prewarm=True)
    for filters in [*FILTERS, SearchFilters(max_risk=0.5)]:
        assert warm.bitmaps.allowed(filters).count == warm.dataset.count_rows(filter=filters.expression("arrow"))


@pytest.fixture(scope="module")
def ivf(tmp_path_factory):
    """ANN_MIN_ROWS embedding-like vectors: the in-memory index is an IVF."""
    db = str(tmp_path_factory.mktemp("ivf") / "db")
    vectors = embedding_like(ANN_MIN_ROWS, DIM)
    lancedb.connect(db).create_table(ITEMS, synthetic_items(vectors, moderated=True))
    return vectors, Searcher(db, prewarm=True)


def test_ivf_recall_against_numpy_with_near_exact_scores(ivf):
    vectors, warm = ivf
    assert warm.memory["vector"].partitions > 1
    queries = embedding_like(50, DIM, sample=2)
    shown = np.array([d != "block" for d in warm.rows["decision"].to_pylist()])
    found, truth = [], []
    for query in queries:
        hits = warm.nearest(query, 10, SearchFilters())
        scores = np.where(shown, vectors @ query, -np.inf)
        found.append({int(h["item_id"][1:]) for h in hits})
        truth.append(set(np.argsort(-scores)[:10].tolist()))
        # fp16 codes: scores within 1e-3 of the exact cosines.
        np.testing.assert_allclose([h["score"] for h in hits], vectors[[int(h["item_id"][1:]) for h in hits]] @ query, atol=1e-3)
    assert np.mean([len(f & t) / 10 for f, t in zip(found, truth)]) >= 0.95


def test_a_rare_filter_scans_every_partition_for_its_rows(ivf, monkeypatch):
    vectors, warm = ivf
    # 83 rows of 5,000 match: one probed partition of 19 would hold about 4 of them.
    monkeypatch.setattr(warm, "tuning", QueryTuning(nprobes=1))
    query = embedding_like(1, DIM, sample=3)[0]
    hits = warm.nearest(query, 10, SearchFilters(kind="video", category="cat3", include_blocked=True))
    n = np.arange(len(vectors))
    keep = (n % 3 == 1) & (n % 20 == 3)  # synthetic_items: kinds cycle by 3, categories by 20
    assert keep.sum() == 83 and {(h["kind"], h["category"]) for h in hits} == {("video", "cat3")}
    assert {int(h["item_id"][1:]) for h in hits} == set(np.argsort(-np.where(keep, vectors @ query, -np.inf))[:10].tolist())
