"""Safety scoring inside the real ingest job: the hash bank, video frames, the features export."""

import io
import json
import shutil

import lancedb
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import MICRO, ray_job, sample_photo, sample_video, write_manifest
from typer.testing import CliRunner

from shoplens.pipelines.cli import app
from shoplens.pipelines.store.schemas import FRAMES, ITEMS
from shoplens.safety.policy import load_policy
from shoplens.safety.ranking_features import FEATURE_SCHEMA_VERSION

MICRO_FLAGS = ["--model", MICRO.model, "--pretrained", MICRO.pretrained, "--device", "cpu"]


def invoke(*args) -> tuple[int, dict]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, json.loads(result.stdout.strip().splitlines()[-1])


def jpeg(image, quality=90) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A bank entry made from the astronaut photo; a catalog with copies of it, other photos, a
    video and a broken file, ingested with the default policy; its features exported."""
    from PIL import Image

    root = tmp_path_factory.mktemp("safety")
    db = root / "db"
    shutil.copyfile(sample_photo("astronaut.png"), root / "known.png")
    code, bank = invoke("safety", "bank", "add", root / "known.png", "--category", "sexual", "--db", db)
    assert code == 0 and bank["added"] == 1
    flat = root / "flat.png"
    Image.new("RGB", (300, 300), (128, 128, 128)).save(flat)
    code, refused = invoke("safety", "bank", "add", flat, root / "missing.png", "--category", "sexual", "--db", db)
    assert code == 3 and refused["added"] == 0 and "too featureless" in refused["errors"][0]["error"]
    assert "cannot read" in refused["errors"][1]["error"]

    astronaut = Image.open(root / "known.png").convert("RGB")
    w, h = astronaut.size
    (root / "resized.jpg").write_bytes(jpeg(astronaut.resize((w // 2, h // 2)), quality=60))
    (root / "cropped.jpg").write_bytes(jpeg(astronaut.crop((5, 5, w - 5, h - 5))))
    for name in ("coffee.png", "chelsea.png"):
        shutil.copyfile(sample_photo(name), root / name)
    shutil.copyfile(sample_video("bikes.mp4"), root / "bikes.mp4")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    rows = [
        {"item_id": "copy-resized", "kind": "product", "title": "Space suit poster", "image": "resized.jpg"},
        {"item_id": "copy-cropped", "kind": "product", "title": "", "image": "cropped.jpg"},
        {"item_id": "cup", "kind": "product", "title": "Coffee cup", "image": "coffee.png"},
        {"item_id": "cat", "kind": "product", "title": "Cat print", "image": "chelsea.png"},
        {"item_id": "bikes", "kind": "live", "title": "Bike shop live", "video": "bikes.mp4", "frames": "uniform:4"},
        {"item_id": "broken", "kind": "product", "title": "Broken", "image": "broken.jpg"},
    ]
    code, summary = invoke("ingest", write_manifest(root / "catalog.csv", rows), "--db", db, *MICRO_FLAGS)
    assert code == 3 and summary["failed"] == 1
    code, export = invoke("features", "export", "--db", db, "--out", root / "features.parquet")
    assert code == 0 and export["rows"] == len(rows)
    items = {r["item_id"]: r for r in lancedb.connect(db).open_table(ITEMS).to_arrow().to_pylist()}
    return root, db, bank["entries"][0], items


@ray_job
def test_copies_of_banked_media_are_blocked_naming_the_entry(scored):
    _, _, entry, items = scored
    for item_id in ("copy-resized", "copy-cropped"):
        assert items[item_id]["decision"] == "block" and items[item_id]["hash_match"] == entry
        assert items[item_id]["risk_sexual"] == 1.0
    assert items["cup"]["hash_match"] is None and items["cat"]["hash_match"] is None


@ray_job
def test_every_item_is_scored_or_unscored_never_silently_safe(scored):
    _, _, _, items = scored
    policy = load_policy()
    for item_id, row in items.items():
        assert row["safety_version"] == policy.version
        if item_id == "broken":
            assert row["decision"] == "unscored" and row["risk"] is None  # failed to ingest
            continue
        risks = [row[f"risk_{c}"] for c in policy.names]
        assert all(r is not None and 0 <= r <= 1 for r in risks) and row["risk"] == pytest.approx(max(risks))
        assert row["decision"] in ("allow", "review", "block") and row["safety_error"] is None


@ray_job
def test_video_frames_carry_risks_and_the_item_the_worst_frames_time(scored):
    _, db, _, items = scored
    frames = lancedb.connect(db).open_table(FRAMES).to_arrow().to_pylist()
    assert len(frames) == 4 and all(len(f["pdq"]) == 64 for f in frames)
    worst = max(frames, key=lambda f: f["risk"])
    video = items["bikes"]
    assert video["risk"] == pytest.approx(worst["risk"]) and video["evidence_timestamp_s"] == pytest.approx(worst["timestamp_s"])
    top = sorted((f["risk"] for f in frames), reverse=True)[: load_policy().aggregation.top_k]
    assert video["risk_topk_mean"] == pytest.approx(np.mean(top), rel=1e-5)
    assert 0 <= video["frames_over_review"] <= 4 and 0 <= video["evidence_timestamp_s"] <= 10.0


@ray_job
def test_features_export_is_one_finite_row_per_item(scored):
    root, _, entry, items = scored
    table = pq.read_table(root / "features.parquet")
    policy = load_policy()
    expected = {
        "item_id",
        "event_timestamp",
        "feature_schema_version",
        "kind",
        "model",
        "safety_version",
        "risk",
        "decision",
        "risk_topk_mean",
        "frames_over_review",
        "evidence_timestamp_s",
        "hash_matched",
        "hash_match",
        "dup_count",
        *(f"risk_{c}" for c in policy.names),
    }
    assert set(table.column_names) == expected
    rows = {r["item_id"]: r for r in table.to_pylist()}
    assert set(rows) == set(items) and table.num_rows == len(items)
    for row in rows.values():
        assert row["feature_schema_version"] == FEATURE_SCHEMA_VERSION and row["event_timestamp"] is not None
    risks = ["risk", "risk_topk_mean", *(f"risk_{c}" for c in policy.names)]
    assert {i for i, row in rows.items() if row["decision"] == "unscored"} == {"broken"}
    assert all(rows["broken"][r] is None for r in risks)  # null, never 0
    assert all(row[r] is not None and np.isfinite(row[r]) for i, row in rows.items() if i != "broken" for r in risks)
    assert rows["copy-resized"]["hash_matched"] and rows["copy-resized"]["hash_match"] == entry
    assert not rows["cup"]["hash_matched"]


def test_features_export_of_a_missing_table_is_a_usage_error(tmp_path):
    code, out = invoke("features", "export", "--db", tmp_path / "empty", "--out", tmp_path / "f.parquet")
    assert code == 2 and "run `shoplens ingest` first" in out["error"]


def test_features_export_writes_null_never_0_for_unscored_items(rescored_db, tmp_path):
    """Without Ray: items that are `unscored` although they were ingested (their stored outputs
    lack a pixel model the policy uses), an item that failed, and scored items around them."""
    code, export = invoke("features", "export", "--db", rescored_db, "--out", tmp_path / "features.parquet")
    assert code == 0 and export["rows"] == 5
    rows = {r["item_id"]: r for r in pq.read_table(tmp_path / "features.parquet").to_pylist()}
    risks = ["risk", "risk_topk_mean", "risk_sexual", "risk_violence"]
    assert {i: r["decision"] for i, r in rows.items()} == {
        "coffee": "allow",
        "astronaut": "unscored",
        "chelsea": "unscored",
        "broken": "unscored",
        "rocket": "allow",
    }
    for item_id in ("astronaut", "chelsea", "broken"):
        assert {r: rows[item_id][r] for r in risks} == dict.fromkeys(risks), item_id
        assert rows[item_id]["frames_over_review"] is None and not rows[item_id]["hash_matched"]
    for item_id in ("coffee", "rocket"):
        assert all(0 < rows[item_id][r] < 1 for r in risks), rows[item_id]
        assert rows[item_id]["frames_over_review"] == 0
