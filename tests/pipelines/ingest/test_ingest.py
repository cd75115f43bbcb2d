"""The ingest job end to end: a real local Ray, a real LanceDB, real photos, generated bad files."""

import shutil

import lancedb
import numpy as np
import pytest
from conftest import MICRO, PIXEL_POLICY, SAMPLE_PHOTOS, bad_media, photo_bytes, ray_job, write_manifest

from shoplens.encoders.media import decode_image
from shoplens.encoders.phash import hamming, hash_bytes
from shoplens.pipelines.ingest.job import IngestConfig, ingest
from shoplens.pipelines.store.database import StoreError
from shoplens.pipelines.store.schemas import ITEMS

BAD_ERRORS = {
    "empty.jpg": "empty file",
    "random.jpg": "not an accepted image format",
    "truncated.jpg": "corrupt or truncated JPEG",
    "page.jpg": "the file starts with b'<!DOCTYPE",
    "notes.txt": "extension '.txt' is not an image type",
    "bomb.png": "decompression bomb",
}


def config(manifest, db, **overrides) -> IngestConfig:
    return IngestConfig(
        manifest=manifest, db=db, model=MICRO.model, pretrained=MICRO.pretrained, device="cpu", policy=PIXEL_POLICY, **overrides
    )


def rows_by_id(db) -> dict[str, dict]:
    table = lancedb.connect(db).open_table(ITEMS)
    return {row["item_id"]: row for row in table.to_arrow().to_pylist()}


def version(db) -> int:
    return lancedb.connect(db).open_table(ITEMS).version


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """Real photos with titles, every bad input a catalog holds, and rows the manifest gets wrong."""
    root = tmp_path_factory.mktemp("catalog")
    media = root / "media"
    media.mkdir()
    rows = []
    for n, name in enumerate(SAMPLE_PHOTOS):
        shutil.copyfile(__import__("conftest").sample_photo(name), media / name)
        rows.append(
            {
                "item_id": f"good-{n}",
                "kind": "product",
                "title": f"product {name}" if n % 2 == 0 else "",
                "image": f"media/{name}",
                "category": "posters",
                "seller_id": f"s{n}",
            }
        )
    for name, data in bad_media().items():
        (media / name).write_bytes(data)
        rows.append({"item_id": f"bad-{name}", "kind": "product", "title": "bad", "image": f"media/{name}"})
    (root.parent / "outside.jpg").write_bytes(photo_bytes())
    rows += [
        {"item_id": "missing-file", "kind": "product", "image": "media/nope.jpg"},
        {"item_id": "outside-root", "kind": "product", "image": "../outside.jpg"},
        {"item_id": "bad-kind", "kind": "gadget", "image": "media/coffee.png"},
        {"item_id": "good-0", "kind": "product", "image": "media/coffee.png"},  # duplicate key
    ]
    return write_manifest(root / "catalog.csv", rows)


@pytest.fixture(scope="module")
def ingested(catalog, tmp_path_factory):
    db = str(tmp_path_factory.mktemp("db") / "shop.lance")
    summary = ingest(config(catalog, db))
    return db, summary


@ray_job
def test_one_row_per_manifest_item(ingested):
    db, summary = ingested
    rows = rows_by_id(db)
    expected = {f"good-{n}" for n in range(len(SAMPLE_PHOTOS))} | {f"bad-{n}" for n in BAD_ERRORS}
    assert set(rows) == expected | {"missing-file", "outside-root", "bad-kind"}
    assert summary.items == len(rows) + 1  # the duplicate row is reported, not stored
    assert summary.written == len(rows) and summary.skipped == 0
    assert rows["good-0"]["media_uri"].endswith("media/astronaut.png")  # the first row with the key won


@ray_job
def test_good_rows_land_with_unit_finite_vectors(ingested, micro_encoder):
    rows = rows_by_id(ingested[0])
    for n in range(len(SAMPLE_PHOTOS)):
        row = rows[f"good-{n}"]
        assert row["status"] == "ok" and row["error"] is None
        vector = np.array(row["vector"], np.float32)
        assert vector.shape == (micro_encoder.dim,) and np.isfinite(vector).all()
        assert abs(np.linalg.norm(vector) - 1) < 1e-5
        assert (row["text_vector"] is None) == (n % 2 == 1)  # no title, no text vector
        assert row["model"] == "open_clip/shoplens-micro/random-seed0"
        assert row["decision"] == "allow" and row["safety_version"] == "test-pixels-1"  # real photos, real pixel models
        assert row["risk"] == max(row["risk_sexual"], row["risk_violence"]) < 0.4 and row["safety_error"] is None
        assert len(row["media_sha256"]) == 64 and row["category"] == "posters" and row["seller_id"] == f"s{n}"


@ray_job
def test_pipeline_vectors_equal_the_encoders(ingested, micro_encoder, catalog):
    rows = rows_by_id(ingested[0])
    for n, name in enumerate(SAMPLE_PHOTOS):
        direct = micro_encoder.encode_images(decode_image((catalog.parent / "media" / name).read_bytes(), micro_encoder.image_size)[None])[
            0
        ]
        np.testing.assert_allclose(np.array(rows[f"good-{n}"]["vector"]), direct, atol=1e-5)
    titled = rows["good-0"]
    np.testing.assert_allclose(np.array(titled["text_vector"]), micro_encoder.encode_texts([titled["title"]])[0], atol=1e-5)


@ray_job
def test_bad_input_is_a_row_error_and_the_job_goes_on(ingested):
    db, summary = ingested
    rows = rows_by_id(db)
    for name, message in BAD_ERRORS.items():
        row = rows[f"bad-{name}"]
        assert row["status"] == "error" and message in row["error"], (name, row["error"])
        assert row["vector"] is None and row["text_vector"] is None and row["decision"] == "unscored"
    assert "cannot read" in rows["missing-file"]["error"]
    assert "outside the media root" in rows["outside-root"]["error"]
    assert "kind must be one of" in rows["bad-kind"]["error"]
    assert summary.ok == len(SAMPLE_PHOTOS)
    assert summary.failed == len(BAD_ERRORS) + 3 + 1  # + the rejected duplicate
    assert {"item_id": "good-0", "row": 16, "error": "duplicate item_id: the first row with it was kept"} in summary.errors


@ray_job
def test_rerun_changes_nothing(ingested, catalog):
    db, first = ingested
    before, rows_before = version(db), rows_by_id(db)
    again = ingest(config(catalog, db))
    assert version(db) == before  # no write at all
    assert rows_by_id(db) == rows_before
    # Everything was skipped: the missing file was retried, and failed exactly as before.
    assert again.written == 0 and again.skipped == len(rows_before)
    assert (again.ok, again.failed) == (first.ok, first.failed)


@ray_job
def test_changed_image_is_re_embedded(tmp_path, media_dir):
    rows = [{"item_id": f"p{n}", "kind": "product", "title": "mug", "image": name} for n, name in enumerate(SAMPLE_PHOTOS[:3])]
    manifest = write_manifest(media_dir / "catalog.jsonl", rows)
    db = str(tmp_path / "db")
    ingest(config(manifest, db))
    before = rows_by_id(db)
    (media_dir / SAMPLE_PHOTOS[1]).write_bytes(photo_bytes("rocket.jpg", fmt="PNG"))
    summary = ingest(config(manifest, db))
    after = rows_by_id(db)
    assert (summary.written, summary.skipped) == (1, 2)
    assert after["p1"]["media_sha256"] != before["p1"]["media_sha256"]
    assert not np.allclose(after["p1"]["vector"], before["p1"]["vector"])
    assert after["p1"]["updated_at"] > before["p1"]["updated_at"]
    assert after["p0"] == before["p0"] and after["p2"] == before["p2"]


@ray_job
def test_changed_title_is_re_embedded(tmp_path, media_dir):
    db = str(tmp_path / "db")
    manifest = write_manifest(media_dir / "catalog.csv", [{"item_id": "p", "kind": "product", "title": "mug", "image": "coffee.png"}])
    ingest(config(manifest, db))
    before = rows_by_id(db)["p"]
    write_manifest(manifest, [{"item_id": "p", "kind": "product", "title": "kettle", "image": "coffee.png"}])
    assert ingest(config(manifest, db)).written == 1
    after = rows_by_id(db)["p"]
    assert after["title"] == "kettle" and not np.allclose(after["text_vector"], before["text_vector"])
    np.testing.assert_allclose(after["vector"], before["vector"], atol=1e-6)


def test_a_changed_category_or_seller_is_not_skipped(tmp_path, media_dir):
    """The store's skip rule on a real LanceDB, without Ray: an item is skipped only when its
    model, its bytes and every manifest field match what is stored; a category or seller that
    changed (to another value, from or to none) re-ingests it."""
    import hashlib
    from pathlib import Path

    from shoplens.pipelines.ingest.manifest import read_manifest
    from shoplens.pipelines.ingest.writer import item_rows
    from shoplens.pipelines.store.database import ItemStore
    from shoplens.safety.policy import load_policy

    stored_fields = {
        "p0": ("kitchen", "s1"),
        "p1": ("kitchen", "s1"),
        "p2": ("kitchen", "s1"),
        "p3": ("kitchen", "s1"),
        "p4": (None, "s1"),
        "p5": ("kitchen", None),
        "p6": ("kitchen", None),
    }
    now = {
        "p0": ("kitchen", "s1"),
        "p1": ("toys", "s1"),
        "p2": ("kitchen", "s2"),
        "p3": (None, "s1"),
        "p4": ("kitchen", "s1"),
        "p5": ("kitchen", None),
        "p6": ("kitchen", "s6"),
    }
    images = {item_id: SAMPLE_PHOTOS[n % len(SAMPLE_PHOTOS)] for n, item_id in enumerate(stored_fields)}

    def manifest(fields: dict, name: str):
        rows = [
            {"item_id": i, "kind": "product", "title": "mug", "image": images[i], "category": c, "seller_id": s}
            for i, (c, s) in fields.items()
        ]
        return read_manifest(write_manifest(tmp_path / name, rows), media_dir).rows

    store = ItemStore(str(tmp_path / "db"))
    table = store.items(64, load_policy().names)
    first = manifest(stored_fields, "first.csv")
    batch = {name: np.array(first[name].to_pylist(), dtype=object) for name in first.column_names}
    sha = {i: hashlib.sha256(Path(uri).read_bytes()).hexdigest() for i, uri in zip(batch["item_id"], batch["media_uri"])}
    n = len(batch["item_id"])
    batch |= {
        "media_sha256": np.array([sha[i] for i in batch["item_id"]], dtype=object),
        "note": np.full(n, None, dtype=object),
        "vector": np.full((n, 64), 0.125, np.float32),
        "text_vector": np.full((n, 64), 0.125, np.float32),
        "model": np.full(n, "m", dtype=object),
    }
    store.upsert(table, item_rows(batch, table.schema))
    assert {r["item_id"]: (r["category"], r["seller_id"]) for r in table.to_arrow().to_pylist()} == stored_fields

    known = {r["item_id"]: r for r in store.mark_unchanged(table, manifest(now, "now.csv"), "m").to_pylist()}
    assert {i: r["known_sha256"] for i, r in known.items()} == {
        "p0": sha["p0"],
        "p1": None,
        "p2": None,
        "p3": None,
        "p4": None,
        "p5": sha["p5"],
        "p6": None,
    }
    assert {i: r["known_status"] for i, r in known.items()} == {i: "ok" if i in ("p0", "p5") else None for i in now}
    # The same fields again: every item is unchanged.
    again = store.mark_unchanged(table, manifest(stored_fields, "again.csv"), "m").to_pylist()
    assert {r["item_id"]: r["known_sha256"] for r in again} == sha


def test_a_changed_kind_or_an_unknown_stored_model_is_not_skipped(tmp_path, media_dir):
    """The skip rule's other keys: a video now listed as a live segment (same file, same frames)
    is not skipped, nor is a row stored without a model (a table from before the column)."""
    import hashlib
    from pathlib import Path

    from shoplens.pipelines.ingest.manifest import read_manifest
    from shoplens.pipelines.ingest.writer import item_rows
    from shoplens.pipelines.store.database import ItemStore
    from shoplens.safety.policy import load_policy

    clip = media_dir / "clip.mp4"  # the skip rule compares fields and bytes: what the file holds does not matter here
    clip.write_bytes(photo_bytes())

    def manifest(kinds: dict, name: str):
        rows = [
            {"item_id": i, "kind": k, "video": "clip.mp4", "frames": "uniform:4"}
            if k != "product"
            else {"item_id": i, "kind": k, "image": "coffee.png"}
            for i, k in kinds.items()
        ]
        return read_manifest(write_manifest(tmp_path / name, rows), media_dir).rows

    stored = {"same-video": "video", "now-live": "video", "no-model": "product", "same-product": "product"}
    first = manifest(stored, "first.csv")
    batch = {name: np.array(first[name].to_pylist(), dtype=object) for name in first.column_names}
    n = len(batch["item_id"])
    sha = [hashlib.sha256(Path(uri).read_bytes()).hexdigest() for uri in batch["media_uri"]]
    batch |= {
        "media_sha256": np.array(sha, dtype=object),
        "note": np.full(n, None, dtype=object),
        "vector": np.full((n, 64), 0.125, np.float32),
        "text_vector": np.full((n, 64), 0.125, np.float32),
        "model": np.array(["m" if i != "no-model" else None for i in batch["item_id"]], dtype=object),
    }
    store = ItemStore(str(tmp_path / "db"))
    table = store.items(64, load_policy().names)
    store.upsert(table, item_rows(batch, table.schema))

    known = {r["item_id"]: r for r in store.mark_unchanged(table, manifest({**stored, "now-live": "live"}, "now.csv"), "m").to_pylist()}
    assert {i: r["known_status"] for i, r in known.items()} == {
        "same-video": "ok",
        "now-live": None,
        "no-model": None,
        "same-product": "ok",
    }
    assert known["now-live"]["known_sha256"] is None and known["no-model"]["known_sha256"] is None
    assert known["same-video"]["known_sha256"] == sha[0]


def test_a_re_run_rewrites_the_items_whose_category_or_seller_changed(tmp_path, media_dir):
    """The same through the ingest's stages (run in this process): the changed rows are written
    again with their new fields, the unchanged one is not touched."""
    from conftest import ingest_in_process

    def run(fields: dict) -> dict[str, dict]:
        rows = [
            {"item_id": i, "kind": "product", "title": "mug", "image": image, "category": c, "seller_id": s}
            for i, (image, c, s) in fields.items()
        ]
        ingest_in_process(write_manifest(tmp_path / "catalog.csv", rows), str(tmp_path / "db"), PIXEL_POLICY, media_dir)
        return rows_by_id(str(tmp_path / "db"))

    before = run(
        {"same": ("coffee.png", "kitchen", "s1"), "moved": ("chelsea.png", "kitchen", "s1"), "sold-on": ("rocket.jpg", "toys", "s1")}
    )
    after = run(
        {"same": ("coffee.png", "kitchen", "s1"), "moved": ("chelsea.png", "posters", "s1"), "sold-on": ("rocket.jpg", "toys", "s2")}
    )
    assert after["same"] == before["same"]
    assert (after["moved"]["category"], after["sold-on"]["seller_id"]) == ("posters", "s2")
    for item_id in ("moved", "sold-on"):
        assert after[item_id]["updated_at"] > before[item_id]["updated_at"] and after[item_id]["status"] == "ok"
        np.testing.assert_allclose(after[item_id]["vector"], before[item_id]["vector"], atol=1e-6)


@ray_job
def test_a_table_of_another_dimension_is_refused(tmp_path, media_dir):
    db = str(tmp_path / "db")
    lancedb.connect(db).create_table(ITEMS, data=[{"item_id": "x", "vector": [0.0] * 8}])
    manifest = write_manifest(media_dir / "catalog.csv", [{"item_id": "p", "kind": "product", "image": "coffee.png"}])
    with pytest.raises(StoreError, match="fixed_size_list<item: float>\\[8\\] vectors, but this model makes 64-d ones"):
        ingest(config(manifest, db))


@ray_job
def test_an_empty_manifest_is_an_empty_job(tmp_path, media_dir):
    manifest = media_dir / "empty.csv"
    manifest.write_text("item_id,kind,image\n")
    summary = ingest(config(manifest, str(tmp_path / "db")))
    assert (summary.items, summary.ok, summary.failed, summary.written) == (0, 0, 0, 0)
    assert lancedb.connect(str(tmp_path / "db")).open_table(ITEMS).count_rows() == 0


@ray_job
def test_device_decoding_a_catalog_of_jpegs_only(tmp_path):
    """Every row of a block left to the device: through Arrow and Ray its frames column comes
    back as one [N, 0, S, S, 3] array, which the embed stage must still fill row by row."""
    rows = []
    for n, name in enumerate(SAMPLE_PHOTOS):
        (tmp_path / f"{n}.jpg").write_bytes(photo_bytes(name))
        rows.append({"item_id": f"jpeg-{n}", "kind": "product", "title": name, "image": f"{n}.jpg"})
    summary = ingest(config(write_manifest(tmp_path / "catalog.csv", rows), str(tmp_path / "db"), device_decode="on"))
    assert (summary.ok, summary.failed) == (len(rows), 0), summary.errors
    for row in rows_by_id(str(tmp_path / "db")).values():
        assert row["vector"] is not None and row["pdq"] is not None and row["pdq_quality"] > 50, row["item_id"]


@ray_job
def test_device_decoding_gives_the_cpu_paths_rows(ingested, catalog, tmp_path):
    """The embed stage's own JPEG decoding (nvJPEG on a GPU; torchvision's CPU decoder here, the
    same code) against the decode stage's: the same vectors within fp tolerance, the same errors."""
    db = str(tmp_path / "device.lance")
    summary = ingest(config(catalog, db, device_decode="on"))
    cpu, device = rows_by_id(ingested[0]), rows_by_id(db)
    assert (summary.ok, summary.failed) == (ingested[1].ok, ingested[1].failed)
    for item_id, row in cpu.items():
        assert device[item_id]["status"] == row["status"] and device[item_id]["error"] == row["error"], item_id
        if row["vector"] is not None:
            assert np.dot(row["vector"], device[item_id]["vector"]) >= 0.99, item_id
            assert device[item_id]["decision"] == row["decision"], item_id
            # The device hashes the whole picture at full size, the CPU a reduced-scale decode: still a match.
            assert hamming(hash_bytes([device[item_id]["pdq"]]), hash_bytes([row["pdq"]]))[0, 0] <= 31, item_id
