"""Policies that change under a stored database: a category added, the categories reordered, a
category removed, a custom policy remembered by the database, a bad heads file refused."""

import json
import shutil

import lancedb
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import MICRO, PIXEL_POLICY, sample_photo, sample_video, write_manifest
from typer.testing import CliRunner

from shoplens.pipelines.cli import app
from shoplens.pipelines.store.schemas import FRAMES, ITEMS

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]
MICRO_FLAGS = ["--model", MICRO.model, "--pretrained", MICRO.pretrained, "--device", "cpu"]


def invoke(*args) -> tuple[int, dict]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, json.loads(result.stdout.strip().splitlines()[-1])


def policy_file(path, version: str, categories: list[str]) -> str:
    """The pixel-model test policy, with `categories` in this order; `weapons` is fed by the gore
    output as `violence` is, so the two must always hold the same risk."""
    policy = yaml.safe_load(PIXEL_POLICY.read_text())
    every = {"sexual": policy["categories"]["sexual"], "violence": policy["categories"]["violence"]}
    every["weapons"] = {"review": 0.4, "block": 0.85, "prompts": ["a gun"]}
    policy["version"] = version
    policy["categories"] = {c: every[c] for c in categories}
    policy["pixel_models"]["image_safety_s"]["outputs"] = {
        "nsfl": [c for c in ("violence", "weapons") if c in categories],
        "nsfw": ["sexual"],
    }
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def rows(db, table: str) -> dict:
    data = lancedb.connect(db).open_table(table).to_arrow().to_pylist()
    return {(r["item_id"], r.get("frame_index")): r for r in data}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("policies")
    for name in ("astronaut.png", "coffee.png"):
        shutil.copyfile(sample_photo(name), root / name)
    shutil.copyfile(sample_video("bikes.mp4"), root / "bikes.mp4")
    shutil.copyfile(sample_video("carphone_pristine.mp4"), root / "carphone.mp4")
    first = write_manifest(
        root / "first.csv",
        [
            {"item_id": "astronaut", "kind": "product", "title": "Poster", "image": "astronaut.png"},
            {"item_id": "cup", "kind": "product", "title": "Cup", "image": "coffee.png"},
            {"item_id": "bikes", "kind": "video", "title": "Bikes", "video": "bikes.mp4", "frames": "uniform:4"},
        ],
    )
    second = write_manifest(
        root / "second.csv", [{"item_id": "carphone", "kind": "video", "title": "Call", "video": "carphone.mp4", "frames": "uniform:3"}]
    )
    db = root / "db"
    v1 = policy_file(root / "v1.yaml", "custom-1", ["sexual", "violence"])
    code, summary = invoke("ingest", first, "--db", db, "--policy", v1, *MICRO_FLAGS)
    assert code == 0 and summary["ok"] == 3
    return root, db, second


def assert_risks_by_name(db, categories: list[str], gone: list[str] = ()):
    """Every stored item and frame: `risk_weapons` (if present) equals `risk_violence`, an item's
    category risk is its worst frame's (products: their one frame), removed categories are null."""
    items, frames = rows(db, ITEMS), rows(db, FRAMES)
    assert frames and all(r["decision"] != "unscored" for r in items.values())
    for table in (items, frames):
        for row in table.values():
            if "weapons" in categories and "violence" in categories:
                assert row["risk_weapons"] == pytest.approx(row["risk_violence"])
            for c in gone:
                assert row[f"risk_{c}"] is None
            assert row["risk"] == pytest.approx(max(row[f"risk_{c}"] for c in categories))
    for (item_id, _), item in items.items():
        mine = [f for (owner, _), f in frames.items() if owner == item_id]
        for c in categories:
            if mine:
                assert item[f"risk_{c}"] == pytest.approx(max(f[f"risk_{c}"] for f in mine)), (item_id, c)


def test_adding_reordering_and_removing_categories(catalog):
    root, db, second = catalog
    before = {key: row["risk_sexual"] for key, row in rows(db, FRAMES).items()}

    added = policy_file(root / "v2.yaml", "custom-2", ["sexual", "violence", "weapons"])
    code, summary = invoke("ingest", second, "--db", db, "--policy", added, *MICRO_FLAGS)  # a video, after the new column
    assert code == 0 and summary["ok"] == 1
    code, summary = invoke("safety", "rescore", "--db", db, *MICRO_FLAGS[2:4])
    assert code == 0 and summary["policy_version"] == "custom-2"
    assert_risks_by_name(db, ["sexual", "violence", "weapons"])

    reordered = policy_file(root / "v3.yaml", "custom-3", ["weapons", "violence", "sexual"])
    code, summary = invoke("safety", "rescore", "--db", db, "--policy", reordered, *MICRO_FLAGS[2:4])
    assert code == 0 and summary["policy_version"] == "custom-3"
    assert_risks_by_name(db, ["sexual", "violence", "weapons"])
    after = {key: row["risk_sexual"] for key, row in rows(db, FRAMES).items() if key in before}
    assert after == pytest.approx(before, abs=1e-5)  # the same scores (kept to 6 decimals), in the same columns

    removed = policy_file(root / "v4.yaml", "custom-4", ["sexual", "weapons"])
    code, summary = invoke("safety", "rescore", "--db", db, "--policy", removed, *MICRO_FLAGS[2:4])
    assert code == 0 and summary["policy_version"] == "custom-4"
    assert_risks_by_name(db, ["sexual", "weapons"], gone=["violence"])
    code, _ = invoke("features", "export", "--db", db, "--out", root / "features.parquet")
    assert code == 0
    assert pq.read_table(root / "features.parquet")["risk_violence"].null_count == len(rows(db, ITEMS))


def test_the_database_remembers_the_policy_that_built_it(tmp_path):
    shutil.copyfile(sample_photo("chelsea.png"), tmp_path / "cat.png")
    manifest = write_manifest(tmp_path / "catalog.csv", [{"item_id": "cat", "kind": "product", "image": "cat.png"}])
    custom = policy_file(tmp_path / "custom.yaml", "custom-weapons", ["sexual", "weapons"])
    db = tmp_path / "db"
    code, _ = invoke("ingest", manifest, "--db", db, "--policy", custom, *MICRO_FLAGS)
    assert code == 0
    labels = tmp_path / "labels.csv"
    labels.write_text("item_id,category,label\ncat,weapons,0\ncat,sexual,0\n")
    code, imported = invoke("review", "import", labels, "--db", db)  # `weapons` is the custom policy's
    assert code == 0 and imported["labels"] == 2
    code, rescored = invoke("safety", "rescore", "--db", db, *MICRO_FLAGS[2:4])
    assert code == 0 and rescored["policy_version"] == "custom-weapons"
    code, again = invoke("ingest", manifest, "--db", db, *MICRO_FLAGS)  # no --policy: the database's
    assert code == 0 and again["skipped"] == 1


def test_a_policy_naming_a_file_that_is_not_heads_is_a_usage_error_before_the_job(tmp_path):
    (tmp_path / "heads.npz").write_bytes(b"PK\x03\x04 not a heads file")
    policy = yaml.safe_load(PIXEL_POLICY.read_text()) | {"heads": "heads.npz"}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    shutil.copyfile(sample_photo("chelsea.png"), tmp_path / "cat.png")
    manifest = write_manifest(tmp_path / "catalog.csv", [{"item_id": "cat", "kind": "product", "image": "cat.png"}])
    code, summary = invoke("ingest", manifest, "--db", tmp_path / "db", "--policy", tmp_path / "policy.yaml", *MICRO_FLAGS)
    assert code == 2 and "not a heads file" in summary["error"]
    assert not (tmp_path / "db").exists()  # nothing written
