"""`search --hybrid`: vector and title full-text results fused by reciprocal rank, filters kept."""

import json

import lancedb
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from benchmarks.synthetic import embedding_like, synthetic_items
from shoplens.pipelines.cli import app
from shoplens.pipelines.search.searcher import Searcher, SearchError, SearchFilters
from shoplens.pipelines.store.indexes import build_indexes
from shoplens.pipelines.store.schemas import ITEMS

QUERY = "zanzibar teapot"


@pytest.fixture
def db(tmp_db, micro_encoder):
    """200 embedding-like items; `both` has the query's own text vector as its image vector and
    `teapot` in its title; `keyword` has only the word `zanzibar`, and the opposite vector."""
    query = micro_encoder.encode_texts([QUERY])[0]
    vectors = embedding_like(200, len(query))
    vectors[0], vectors[1] = query, -query  # `keyword` is the farthest item from the query
    rows = synthetic_items(vectors, model=micro_encoder.provenance)
    titles = rows["title"].to_pylist()
    titles[0], titles[1] = "classic teapot", "zanzibar spice box"
    ids = rows["item_id"].to_pylist()
    ids[0], ids[1] = "both", "keyword"
    rows = rows.set_column(0, "item_id", pa.array(ids)).set_column(rows.schema.get_field_index("title"), "title", pa.array(titles))
    lancedb.connect(tmp_db).create_table(ITEMS, rows)
    return tmp_db


def test_hybrid_fuses_a_keyword_only_match_with_vector_results(db):
    with pytest.raises(SearchError, match="run `shoplens index` first"):
        Searcher(db, device="cpu").hybrid(QUERY, k=5)
    build_indexes(db, log=lambda line: None)
    searcher = Searcher(db, device="cpu")
    vector_ids = [h["item_id"] for h in searcher.by_text(QUERY, k=5)]
    assert vector_ids[0] == "both" and "keyword" not in vector_ids
    keyword_ids = [h["item_id"] for h in searcher.by_keywords(QUERY, k=5)]
    assert set(keyword_ids) == {"both", "keyword"}
    hits = searcher.hybrid(QUERY, k=5)
    scores = {h["item_id"]: h["score"] for h in hits}
    assert hits[0]["item_id"] == "both" and scores["both"] == pytest.approx(2 / 61)  # first in both lists
    assert scores["keyword"] == pytest.approx(1 / 62)  # second of the keyword list only
    assert set(vector_ids[1:4]) <= set(scores)


def test_hybrid_keeps_filters(db):
    build_indexes(db, log=lambda line: None)
    # synthetic_items: `both` is row 0 (a product, cat0); `keyword` is row 1 (a video, cat1).
    hits = Searcher(db, device="cpu").hybrid(QUERY, k=10, filters=SearchFilters(kind="video"))
    assert "keyword" in {h["item_id"] for h in hits} and "both" not in {h["item_id"] for h in hits}
    assert {h["kind"] for h in hits} == {"video"}
    # Injection text with a filter that matches rows: its words are terms to match, never query
    # syntax or SQL, and the filter still holds. Only titles holding `zanzibar`, `or` or `1` as a
    # word can match (BM25 tokens), all of them videos.
    searcher = Searcher(db, device="cpu")
    evil_text = "zanzibar' OR '1'='1"
    keyword_hits = searcher.by_keywords(evil_text, k=200, filters=SearchFilters(kind="video"))
    titles = {h["item_id"]: h["title"] for h in keyword_hits}
    assert "keyword" in titles and {h["kind"] for h in keyword_hits} == {"video"}
    assert all({"zanzibar", "or", "1"} & set(title.lower().split()) for title in titles.values()), titles
    videos = searcher.store.read(ITEMS, ["item_id"], kind="video").num_rows
    assert len(keyword_hits) < videos  # not every video: the quote did not close a string
    hits = searcher.hybrid(evil_text, k=10, filters=SearchFilters(kind="video"))
    assert len(hits) == 10 and {h["kind"] for h in hits} == {"video"} and "keyword" in {h["item_id"] for h in hits}
    # An injection in a filter, with a text that matches rows: nothing passes the filter.
    assert searcher.hybrid(QUERY, k=10) and searcher.hybrid(QUERY, k=10, filters=SearchFilters(category="x' OR '1'='1")) == []
    assert searcher.store.count(ITEMS) == 200


def test_hybrid_cli(db):
    build_indexes(db, log=lambda line: None)
    result = CliRunner().invoke(app, ["search", "--db", db, "--text", QUERY, "--hybrid", "-k", "3", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    ids = [r["item_id"] for r in json.loads(result.stdout.strip().splitlines()[-1])["results"]]
    assert ids[0] == "both" and "keyword" in ids
    assert CliRunner().invoke(app, ["search", "--db", db, "--item", "both", "--hybrid"]).exit_code == 2


def test_keyword_search_finds_the_full_text_index_beside_another_index_on_titles(db):
    """A second index on `title` (an operator's BTREE for exact lookups) leaves the full-text
    index in place, and keyword and hybrid search use it."""
    build_indexes(db, log=lambda line: None)
    lancedb.connect(db).open_table(ITEMS).create_scalar_index("title", index_type="BTREE")
    searcher = Searcher(db, device="cpu")
    assert {h["item_id"] for h in searcher.by_keywords(QUERY, k=5)} == {"both", "keyword"}
    assert searcher.hybrid(QUERY, k=5)[0]["item_id"] == "both"
