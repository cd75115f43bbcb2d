"""Semantic IDs: codebooks fitted, stored by version and used to code stored and new items, and
the codes in the features export."""

import json

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import PIXEL_POLICY, SAMPLE_PHOTOS, ingest_in_process, write_manifest
from typer.testing import CliRunner

from benchmarks.synthetic import embedding_like, synthetic_items
from shoplens.encoders.codes import Codebooks
from shoplens.pipelines.cli import app
from shoplens.pipelines.store.database import ItemStore
from shoplens.pipelines.store.schemas import ITEMS


def invoke(*args) -> tuple[int, dict]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, json.loads(result.stdout.strip().splitlines()[-1])


def items(db) -> dict[str, dict]:
    return {r["item_id"]: r for r in lancedb.connect(db).open_table(ITEMS).to_arrow().to_pylist()}


@pytest.fixture
def db(tmp_db):
    """600 embedding-like items, and one that failed to ingest (no vector)."""
    rows = synthetic_items(embedding_like(600, 32))
    failed = rows.slice(0, 1).to_pylist()[0] | {"item_id": "failed", "status": "error", "vector": None, "text_vector": None}
    rows = pa.concat_tables([rows, pa.Table.from_pylist([failed], schema=rows.schema)])
    lancedb.connect(tmp_db).create_table(ITEMS, rows, on_bad_vectors="null")  # how a failed row stores "no vector"
    return tmp_db


def test_fitted_codes_are_stored_assigned_deterministically_and_a_failed_item_gets_none(db):
    code, summary = invoke("codes", "fit", "--db", db, "--levels", "3", "--codebook-size", "16")
    assert code == 0 and (summary["fitted_on"], summary["levels"], summary["codebook_size"]) == (600, 3, 16)
    code, assigned = invoke("codes", "assign", "--db", db)
    assert code == 0 and assigned["coded"] == 600 and assigned["codes_version"] == summary["codes_version"]
    stored = items(db)
    assert stored["failed"]["semantic_id"] is None and stored["failed"]["codes_version"] is None
    books = ItemStore(db).codebooks()
    ids = sorted(i for i in stored if i != "failed")
    vectors = np.array([stored[i]["vector"] for i in ids], np.float32)
    np.testing.assert_array_equal(books.assign(vectors), [stored[i]["semantic_id"] for i in ids])
    assert all(0 <= c < 16 for i in ids for c in stored[i]["semantic_id"]) and len(stored[ids[0]]["semantic_id"]) == 3
    # Residual levels code what the coarse one left: the reconstruction gets closer with each level.
    errors = [
        np.linalg.norm(
            vectors - Codebooks(books.centroids[: k + 1], books.model, "x").reconstruct(books.assign(vectors)[:, : k + 1]), axis=1
        ).mean()
        for k in range(3)
    ]
    assert errors[0] > errors[1] > errors[2]
    invoke("codes", "assign", "--db", db)
    assert {i: r["semantic_id"] for i, r in items(db).items()} == {i: r["semantic_id"] for i, r in stored.items()}


def test_a_refit_is_a_new_version_and_the_old_codes_stay_readable(db):
    _, first = invoke("codes", "fit", "--db", db, "--levels", "2", "--codebook-size", "8")
    invoke("codes", "assign", "--db", db)
    before = items(db)
    _, second = invoke("codes", "fit", "--db", db, "--levels", "2", "--codebook-size", "16")
    assert second["codes_version"] != first["codes_version"]
    store = ItemStore(db)
    old = store.codebooks(first["codes_version"])
    assert old.size == 8 and store.codebooks().size == 16
    kept = items(db)  # untouched until assigned again, and still decodable by their version
    assert {r["codes_version"] for i, r in kept.items() if i != "failed"} == {first["codes_version"]}
    vector = np.array(kept["i0000000"]["vector"], np.float32)[None]
    assert old.assign(vector).tolist()[0] == before["i0000000"]["semantic_id"]
    invoke("codes", "assign", "--db", db)
    assert {r["codes_version"] for i, r in items(db).items() if i != "failed"} == {second["codes_version"]}


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--codebook-size", "1024"], "needs at least 1024 embedded items, and 600"), (["--levels", "0"], "--levels >= 1")],
)
def test_a_fit_that_cannot_be_made_is_refused_with_exit_2_saying_why(db, args, message):
    code, summary = invoke("codes", "fit", "--db", db, *args)
    assert code == 2 and message in summary["error"] and ItemStore(db).codebooks() is None


def test_assigning_before_any_fit_is_refused_with_the_remedy(db):
    code, summary = invoke("codes", "assign", "--db", db)
    assert code == 2 and "run `shoplens codes fit" in summary["error"]


def test_the_features_export_carries_one_column_per_level_and_the_version(db, tmp_path):
    _, fitted = invoke("codes", "fit", "--db", db, "--levels", "3", "--codebook-size", "8")
    invoke("codes", "assign", "--db", db)
    code, _ = invoke("features", "export", "--db", db, "--out", tmp_path / "features.parquet")
    assert code == 0
    table = pq.read_table(tmp_path / "features.parquet")
    assert {"semantic_id_0", "semantic_id_1", "semantic_id_2", "codes_version"} <= set(table.column_names)
    assert "semantic_id" not in table.column_names and table.schema.field("semantic_id_0").type == pa.int32()
    rows = {r["item_id"]: r for r in table.to_pylist()}
    stored = items(db)
    assert [rows["i0000007"][f"semantic_id_{k}"] for k in range(3)] == stored["i0000007"]["semantic_id"]
    assert rows["i0000007"]["codes_version"] == fitted["codes_version"] and rows["failed"]["semantic_id_0"] is None


def test_an_ingest_codes_the_items_it_writes_with_the_newest_codebooks(tmp_path, media_dir):
    db = str(tmp_path / "db")
    first = [{"item_id": name.split(".")[0], "kind": "product", "title": name, "image": name} for name in SAMPLE_PHOTOS]
    ingest_in_process(write_manifest(media_dir / "first.csv", first), db, PIXEL_POLICY)
    assert all(r["semantic_id"] is None for r in items(db).values())  # no codebooks yet
    _, fitted = invoke("codes", "fit", "--db", db, "--levels", "2", "--codebook-size", "4")
    ingest_in_process(
        write_manifest(media_dir / "new.csv", [{"item_id": "new", "kind": "product", "title": "x", "image": "coffee.png"}]),
        db,
        PIXEL_POLICY,
    )
    new = items(db)["new"]
    assert new["codes_version"] == fitted["codes_version"]
    assert items(db)["coffee"]["semantic_id"] is None  # stored before the fit: coded by `codes assign`, not by an ingest
    books = ItemStore(db).codebooks()
    assert new["semantic_id"] == books.assign(np.array(new["vector"], np.float32)[None]).tolist()[0]
