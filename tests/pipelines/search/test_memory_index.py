"""A warm searcher's in-memory copy (`Searcher(prewarm=True)`) against Lance's exact search and
numpy on real LanceDB tables: the same hits with deleted and failed rows among the vectors, the
same rows per filter as a Lance scan, and recall, rare filters and large k under its IVF."""

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from benchmarks.synthetic import embedding_like, synthetic_items
from shoplens.pipelines.search.searcher import Searcher, SearchFilters
from shoplens.pipelines.store.indexes import ANN_MIN_ROWS, QueryTuning
from shoplens.pipelines.store.schemas import ITEMS

DIM = 64
FILTERS = [
    SearchFilters(),
    SearchFilters(include_blocked=True),
    SearchFilters(kind="video", category="cat3"),
    SearchFilters(seller_id="s7"),
    SearchFilters(seller_id="nobody"),
    SearchFilters(category="cat1' OR '1'='1"),
]


def with_failed_rows(rows: pa.Table, every: int) -> pa.Table:
    """Every `every`-th row failed to ingest (status error, no vectors); every 11th ingested
    without a title vector (status ok)."""
    numbers = np.arange(rows.num_rows)
    for name, gone in (("vector", numbers % every == 0), ("text_vector", (numbers % every == 0) | (numbers % 11 == 5))):
        column = rows[name]
        rows = rows.set_column(
            rows.schema.get_field_index(name), name, pc.if_else(pa.array(gone), pa.nulls(rows.num_rows, column.type), column)
        )
    failed = pa.array(numbers % every == 0)
    return rows.set_column(rows.schema.get_field_index("status"), "status", pc.if_else(failed, "error", rows["status"]))


def with_risks(rows: pa.Table) -> pa.Table:
    """Risks spread over [0, 0.99] in steps of 0.01 (float32, as stored: 0.3 is float32(0.3)),
    null where the item is unscored or failed to ingest."""
    numbers = np.arange(rows.num_rows)
    risks = ((numbers * 37 + 1) % 100 / 100).astype(np.float32)
    unscored = np.array([d == "unscored" for d in rows["decision"].to_pylist()]) | np.array([s != "ok" for s in rows["status"].to_pylist()])
    return rows.set_column(rows.schema.get_field_index("risk"), "risk", pa.array(risks, pa.float32(), mask=unscored))


def fragmented_table(db: str, vectors: np.ndarray, every: int):
    """Two writes (two fragments), rows deleted from the first, failed rows among the rest."""
    rows = with_risks(with_failed_rows(synthetic_items(vectors, moderated=True), every))
    half = len(vectors) // 2
    table = lancedb.connect(db).create_table(ITEMS, rows.slice(0, half), on_bad_vectors="null")  # as the store writes them
    table.add(rows.slice(half), on_bad_vectors="null")
    table.delete("item_id >= 'i0000100' AND item_id < 'i0000150'")  # our own literal, not user text
    return table


def test_in_memory_hits_equal_lance_exact_search_with_deleted_and_failed_rows_between(tmp_db):
    vectors = embedding_like(600, DIM)
    fragmented_table(tmp_db, vectors, every=7)
    lance, warm = Searcher(tmp_db), Searcher(tmp_db, prewarm=True)
    alive = (np.arange(600) < 100) | (np.arange(600) >= 150)
    assert warm.memory.indexes["vector"].size == (alive & (np.arange(600) % 7 != 0)).sum()
    for query in embedding_like(5, DIM, sample=2):
        for filters in FILTERS:
            for field in ("image", "title"):
                expected, found = lance.nearest(query, 10, filters, field), warm.nearest(query, 10, filters, field)
                assert [h | {"score": 0} for h in found] == [h | {"score": 0} for h in expected]  # the same rows, every column
                np.testing.assert_allclose([h["score"] for h in found], [h["score"] for h in expected], atol=1e-5)
                assert all(int(h["item_id"][1:]) % 7 and not 100 <= int(h["item_id"][1:]) < 150 for h in found)
    # A zero vector has no direction: nothing is near it, on either path.
    assert warm.nearest(np.zeros(DIM), 10, SearchFilters()) == lance.nearest(np.zeros(DIM), 10, SearchFilters()) == []


def allowed_by_hand(rows: list[dict], filters: SearchFilters, column: str) -> set[str]:
    """The rows a filter lets through, by the README's rules in plain Python (not by the filter's
    own expression): ingested rows with a vector in `column`, of the kind, category and seller
    asked for, blocked and unscored ones only when asked for, and under `max_risk` only rows with
    a risk at or below it, compared in float32 as stored (a null risk never passes)."""
    hidden = {d for d, shown in (("block", filters.include_blocked), ("unscored", filters.include_unscored)) if not shown}
    limit = None if filters.max_risk is None else float(np.float32(filters.max_risk))
    return {
        r["item_id"]
        for r in rows
        if r["status"] == "ok"
        and r[column] is not None
        and r["decision"] not in hidden
        and all(getattr(filters, name) is None or getattr(filters, name) == r[name] for name in ("kind", "category", "seller_id"))
        and (limit is None or (r["risk"] is not None and r["risk"] <= limit))
    }


def test_filter_bitmaps_hold_the_rows_the_filters_allow(tmp_db):
    fragmented_table(tmp_db, embedding_like(600, DIM), every=5)
    warm = Searcher(tmp_db, prewarm=True)
    rows = lancedb.connect(tmp_db).open_table(ITEMS).to_arrow().to_pylist()
    assert sum(r["risk"] is not None for r in rows) > 300 and any(r["risk"] == np.float32(0.3) for r in rows)
    item_ids = np.array(warm.memory.rows["item_id"].to_pylist())
    risk_filters = [
        SearchFilters(max_risk=0.5),
        SearchFilters(max_risk=0.3),
        SearchFilters(max_risk=0),
        SearchFilters(max_risk=1),
        SearchFilters(include_unscored=True),
        SearchFilters(max_risk=0.3, include_unscored=True, include_blocked=True),
        SearchFilters(kind="product", max_risk=0.6, include_blocked=True),
    ]
    for filters in [*FILTERS, *risk_filters]:
        for column in ("vector", "text_vector"):
            allowed = warm.memory.bitmaps.allowed(filters, column)
            found = set(item_ids[np.unpackbits(allowed.bitmap, bitorder="little")[: len(item_ids)].astype(bool)])
            assert found == allowed_by_hand(rows, filters, column), (filters, column)
            assert allowed.count == len(found)
    # The cases are not empty, and a limit keeps exactly the rows at it.
    assert len(allowed_by_hand(rows, SearchFilters(max_risk=0), "vector")) > 0
    at_limit = {r["item_id"] for r in rows if r["risk"] == np.float32(0.3) and r["decision"] in ("allow", "review") and r["vector"]}
    assert at_limit and at_limit <= allowed_by_hand(rows, SearchFilters(max_risk=0.3), "vector")


@pytest.fixture(scope="module")
def ivf(tmp_path_factory):
    """ANN_MIN_ROWS embedding-like vectors: the in-memory index is an IVF."""
    db = str(tmp_path_factory.mktemp("ivf") / "db")
    vectors = embedding_like(ANN_MIN_ROWS, DIM)
    lancedb.connect(db).create_table(ITEMS, synthetic_items(vectors, moderated=True))
    return vectors, Searcher(db, prewarm=True)


def test_ivf_recall_against_numpy_with_near_exact_scores(ivf):
    vectors, warm = ivf
    assert warm.memory.indexes["vector"].partitions > 1
    queries = embedding_like(50, DIM, sample=2)
    shown = np.array([d != "block" for d in warm.memory.rows["decision"].to_pylist()])
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


def test_k_hits_come_back_when_k_rows_are_allowed(ivf, monkeypatch):
    vectors, warm = ivf
    # A third of the rows, probed in 3 of 19 partitions: about 800 candidates for k = 1,000.
    monkeypatch.setattr(warm, "tuning", QueryTuning(nprobes=1))
    hits = warm.nearest(embedding_like(1, DIM, sample=4)[0], 1000, SearchFilters(kind="video", include_blocked=True))
    assert len(hits) == 1000 and {h["kind"] for h in hits} == {"video"}
