"""`shoplens dedup` on real photo embeddings: re-encoded and resized copies group, unrelated
photos and embedding-like vectors do not, failed rows get nulls, and search shows `dup_count`."""

import json

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from conftest import photo_bytes, sample_photo
from typer.testing import CliRunner

from benchmarks.synthetic import embedding_like, synthetic_items
from shoplens.encoders.media import decode_image
from shoplens.pipelines.cli import app
from shoplens.pipelines.search.dedup import components, dedup, near_duplicate_pairs
from shoplens.pipelines.search.searcher import Searcher, SearchFilters
from shoplens.pipelines.store.database import StoreError
from shoplens.pipelines.store.schemas import ITEMS

# The micro model's random weights put unrelated photos closer than real weights would (coffee and
# retina reach 0.995), so these photos and a 0.99 threshold: their copies stay above it, and
# no two of them reach it.
PHOTOS = ("astronaut.png", "chelsea.png", "rocket.jpg", "retina.jpg")


def photo_items(encoder) -> pa.Table:
    """Each photo as stored, re-encoded as JPEG and resized to 200 px; 40 embedding-like
    vectors; one failed row."""
    names, images = [], []
    for n, photo in enumerate(PHOTOS):
        for variant, data in (
            ("orig", sample_photo(photo).read_bytes()),
            ("jpeg", photo_bytes(photo)),
            ("small", photo_bytes(photo, size=200)),
        ):
            names.append(f"{variant}-{n}")
            images.append(decode_image(data, encoder.image_size))
    vectors = np.concatenate([encoder.encode_images(np.stack(images)), embedding_like(40, encoder.encode_texts(["x"]).shape[1])])
    names += [f"other-{n:02d}" for n in range(40)]
    rows = synthetic_items(vectors, model=encoder.provenance).set_column(0, "item_id", pa.array(names, pa.string()))
    failed = synthetic_items(vectors[:1], model=encoder.provenance).to_pylist()[0] | {
        "item_id": "failed",
        "status": "error",
        "error": "corrupt",
        "vector": None,
        "text_vector": None,
    }
    return pa.concat_tables([rows, pa.Table.from_pylist([failed], schema=rows.schema)])


@pytest.fixture
def photo_db(tmp_db, micro_encoder):
    lancedb.connect(tmp_db).create_table(ITEMS, photo_items(micro_encoder), on_bad_vectors="null")  # the failed row's
    return tmp_db


def stored(db) -> dict[str, tuple]:
    rows = lancedb.connect(db).open_table(ITEMS).to_arrow().to_pylist()
    return {r["item_id"]: (r["dup_group"], r["dup_count"]) for r in rows}


def test_copies_of_a_photo_form_one_group_and_nothing_else_does(photo_db):
    summary = dedup(photo_db, threshold=0.99)
    assert (summary["groups"], summary["items_in_groups"], summary["embedded"]) == (len(PHOTOS), 3 * len(PHOTOS), 12 + 40)
    groups = stored(photo_db)
    for n in range(len(PHOTOS)):  # the smallest item_id names the group
        assert groups[f"jpeg-{n}"] == groups[f"orig-{n}"] == groups[f"small-{n}"] == (f"jpeg-{n}", 3)
    assert all(groups[f"other-{n:02d}"] == (f"other-{n:02d}", 1) for n in range(40))
    assert groups["failed"] == (None, None)
    assert dedup(photo_db, threshold=0.99) | {"seconds": 0} == summary | {"seconds": 0}  # a re-run changes nothing


def test_search_results_carry_dup_count(photo_db, micro_encoder):
    dedup(photo_db, threshold=0.99)
    hits = Searcher(photo_db, device="cpu").by_item("orig-0", k=2, filters=SearchFilters())
    assert {(h["item_id"], h["dup_count"]) for h in hits} == {("jpeg-0", 3), ("small-0", 3)}


def test_an_older_table_gains_the_columns(tmp_db, micro_encoder):
    rows = photo_items(micro_encoder).drop_columns(["dup_group", "dup_count"])
    lancedb.connect(tmp_db).create_table(ITEMS, rows, on_bad_vectors="null")
    result = CliRunner().invoke(app, ["dedup", "--db", tmp_db, "--threshold", "0.99"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["groups"] == len(PHOTOS)
    names = lancedb.connect(tmp_db).open_table(ITEMS).schema.names
    assert names[: len(rows.schema.names)] == rows.schema.names and names[-2:] == ["dup_group", "dup_count"]


def test_pairs_and_components_across_blocks():
    vectors = np.eye(5, dtype=np.float32)[[0, 1, 0, 2, 1, 3]]  # rows 0 and 2, 1 and 4 are identical
    assert sorted(map(tuple, near_duplicate_pairs(vectors, 0.97, block=2).tolist())) == [(0, 2), (1, 4)]
    assert components(6, np.array([[0, 2], [2, 5], [1, 4]])).tolist() == [0, 1, 0, 3, 1, 0]  # a chain joins


def test_bad_threshold_and_missing_table_are_usage_errors(tmp_db):
    with pytest.raises(StoreError, match="no 'items' table"):
        dedup(tmp_db)
    result = CliRunner().invoke(app, ["dedup", "--db", tmp_db, "--threshold", "1.5"])
    assert result.exit_code == 2 and "--threshold" in result.output
