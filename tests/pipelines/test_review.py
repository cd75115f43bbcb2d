"""The review loop on a real ingested catalog: export for Label Studio, decisions back in,
calibration, rescoring."""

import json
import shutil

import lancedb
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import MICRO, photo_variants, sample_photo, sample_video, write_manifest
from PIL import Image
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.ingest import IngestConfig, ingest
from pipelines.store import ITEMS, LABELS
from safety.policy import load_policy

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]
VIOLATING_SOURCE = "rocket.jpg"  # the reviewers' rule: items whose embedding is nearest the rocket photo's are weapons


def invoke(*args) -> tuple[int, dict]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, json.loads(result.stdout.strip().splitlines()[-1])


def items_of(db) -> dict[str, dict]:
    return {r["item_id"]: r for r in lancedb.connect(db).open_table(ITEMS).to_arrow().to_pylist()}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """150 shots of six kinds of product, a video and a photo whose file vanished; ingested."""
    root = tmp_path_factory.mktemp("review")
    rows = [{"item_id": f"p{n:03d}", "kind": "product", "title": f"{source.split('.')[0]} shot {n}", "image": file}
            for n, (file, source) in enumerate(photo_variants(root, 150))]
    shutil.copyfile(sample_video("bikes.mp4"), root / "bikes.mp4")
    rows.append({"item_id": "video", "kind": "video", "title": "bike haul", "video": "bikes.mp4", "frames": "uniform:3"})
    shutil.copyfile(sample_photo("coffee.png"), root / "gone.png")
    rows.append({"item_id": "gone", "kind": "product", "title": "cup", "image": "gone.png"})
    db = str(root / "db")
    ingest(IngestConfig(manifest=write_manifest(root / "catalog.csv", rows), db=db, model=MICRO.model,
                        pretrained=MICRO.pretrained, device="cpu"))
    (root / "gone.png").unlink()  # its evidence cannot be made: the export says so and goes on
    return root, db


def rule(db) -> dict[str, bool]:
    """Ground truth on the embeddings: an item violates `weapons` when its nearest sample photo,
    by visual embedding, is the rocket."""
    from encoders.clip import ClipEncoder
    from encoders.media import decode_image
    from conftest import SAMPLE_PHOTOS

    encoder = ClipEncoder(MICRO, num_threads=1)
    prototypes = encoder.encode_images(np.stack([decode_image(sample_photo(n).read_bytes(), encoder.image_size, name=n) for n in SAMPLE_PHOTOS]))
    truth = {}
    for item_id, row in items_of(db).items():
        if row["vector"] is not None:
            truth[item_id] = SAMPLE_PHOTOS[int(np.argmax(prototypes @ np.array(row["vector"])))] == VIOLATING_SOURCE
    return truth


def agreement(db, truth: dict[str, bool]) -> float:
    """Share of items the policy flags (review or block) exactly when the rule says they violate."""
    items = items_of(db)
    return float(np.mean([(items[i]["decision"] in ("review", "block")) == violating for i, violating in truth.items()]))


def test_export_is_valid_label_studio_and_flat_files(catalog, tmp_path):
    from label_studio_sdk.label_interface import LabelInterface

    _, db = catalog
    out = tmp_path / "queue"
    code, summary = invoke("review", "export", "--db", db, "--out", out, "--include-blocked")
    assert code == 3 and summary["failed"] == 1 and summary["errors"][0]["item_id"] == "gone"  # evidence missing, job went on
    tasks = json.loads((out / "tasks.json").read_text())
    items = items_of(db)
    queued = {i for i, r in items.items() if r["decision"] in ("review", "block")}
    assert {t["data"]["item_id"] for t in tasks} == queued and summary["queued"] == len(queued)
    risks = [t["data"]["risk"] for t in tasks]
    assert risks == sorted(risks, reverse=True)  # priority: highest risk first
    interface = LabelInterface((out / "labeling_config.xml").read_text())
    for entry in tasks:
        assert interface.validate_task({"data": entry["data"]})
        for prediction in entry["predictions"]:
            assert interface.validate_prediction(prediction, return_errors=True) == []
            assert prediction["model_version"].startswith("open_clip/shoplens-micro") and 0 <= prediction["score"] <= 1
    for entry in tasks:
        if entry["data"]["item_id"] != "gone":
            assert Image.open(out / entry["data"]["image"]).size[0] <= 512
    video = next(t for t in tasks if t["data"]["item_id"] == "video") if "video" in queued else None
    if video:
        assert f"-at-{video['data']['evidence_timestamp_s']:.1f}s.jpg" in video["data"]["image"]
    flat = pq.read_table(out / "review.parquet")
    assert flat.num_rows == len(tasks) and flat["priority"].to_pylist() == list(range(1, len(tasks) + 1))
    assert (out / "review.csv").read_text().count("\n") == len(tasks) + 1
    assert json.loads((out / "summary.json").read_text())["policy_version"] == load_policy().version

    code, only_review = invoke("review", "export", "--db", db, "--out", tmp_path / "q2", "--limit", "5")
    reviewed = [t["data"]["decision"] for t in json.loads((tmp_path / "q2" / "tasks.json").read_text())]
    assert code in (0, 3) and set(reviewed) <= {"review"} and len(reviewed) == min(5, sum(items[i]["decision"] == "review" for i in queued))


def annotated_export(tasks: list[dict], truth: dict[str, bool]) -> list[dict]:
    """What Label Studio exports once reviewers have annotated the tasks by the rule."""
    return [{
        "id": n, "data": t["data"], "predictions": t["predictions"],
        "annotations": [{
            "id": 1000 + n, "completed_by": {"id": 7, "email": "reviewer@example.com"}, "was_cancelled": False,
            "created_at": "2026-11-23T10:00:00Z", "updated_at": "2026-11-23T10:00:00Z",
            "result": [{"id": f"r{n}", "type": "choices", "from_name": "violations", "to_name": "evidence",
                        "value": {"choices": ["weapons"] if truth[t["data"]["item_id"]] else ["none"]}}],
        }],
    } for n, t in enumerate(tasks) if t["data"]["item_id"] in truth]


def test_round_trip_calibration_makes_decisions_agree_with_reviewers(catalog, tmp_path):
    from label_studio_sdk.label_interface import LabelInterface

    _, db = catalog
    truth = rule(db)
    before = agreement(db, truth)
    out = tmp_path / "queue"
    invoke("review", "export", "--db", db, "--out", out, "--include-blocked")
    export = annotated_export(json.loads((out / "tasks.json").read_text()), truth)
    interface = LabelInterface((out / "labeling_config.xml").read_text())
    assert all(interface.validate_annotation(task["annotations"][0]) for task in export)
    (tmp_path / "export.json").write_text(json.dumps(export))

    code, imported = invoke("review", "import", tmp_path / "export.json", "--db", db)
    assert code == 0 and imported["items"] == len(export) and imported["labels"] == len(export) * len(load_policy().names)
    code, report = invoke("safety", "calibrate", "--db", db, "--target-precision", "0.9")
    assert code == 0, report
    weapons = report["categories"]["weapons"]
    assert weapons["after"]["roc_auc"] > weapons["before"]["roc_auc"] and weapons["after"]["roc_auc"] >= 0.9
    code, rescored = invoke("safety", "rescore", "--db", db, "--pretrained", "random")
    assert code == 0 and rescored["policy_version"] == report["policy_version"]
    after = agreement(db, truth)
    assert after >= before + 0.3 and after >= 0.9, (before, after)
    items = items_of(db)
    assert {r["safety_version"] for r in items.values()} == {report["policy_version"]}
    assert items["gone"]["decision"] != "unscored"  # scored from what was stored: its file is not needed


def test_malformed_imports_are_refused_and_change_nothing(catalog, tmp_path):
    _, db = catalog
    good = tmp_path / "good.csv"
    good.write_text("item_id,category,label\np000,weapons,0\n")
    assert invoke("review", "import", good, "--db", db)[0] == 0
    labels = lambda: lancedb.connect(db).open_table(LABELS).to_arrow().sort_by("item_id").to_pylist()  # noqa: E731
    kept = labels()
    cases = {
        "bad.json": ("[{\"data\": ", "not valid JSON"),
        "columns.csv": ("item_id,category,label,extra\np001,weapons,1,x\n", "exactly the columns"),
        "duplicate.csv": ("item_id,category,label\np001,weapons,1\np001,weapons,0\n", "labelled twice"),
        "category.csv": ("item_id,category,label\np001,gambling,1\n", "unknown category"),
        "value.csv": ("item_id,category,label\np001,weapons,maybe\n", "label 'maybe'"),
        "labels.txt": ("p001 weapons 1", ".json) or a CSV"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content)
        code, out = invoke("review", "import", tmp_path / name, "--db", db)
        assert code == 2 and message in out["error"], (name, out)
        assert labels() == kept
    (tmp_path / "unknown.csv").write_text("item_id,category,label\np002,weapons,1\nnope,weapons,1\n")
    code, out = invoke("review", "import", tmp_path / "unknown.csv", "--db", db)
    assert code == 3 and out["unknown_items"] == 1 and out["errors"] == [{"item_id": "nope", "error": "no such item in the database"}]
    assert out["labels"] == 1


def test_calibrating_on_too_few_labels_is_refused_with_what_is_needed(tmp_path, catalog):
    root, db = catalog
    small = tmp_path / "db"
    shutil.copytree(db, small)
    (tmp_path / "few.csv").write_text("item_id,category,label\n" + "".join(f"p{n:03d},weapons,{n % 2}\n" for n in range(20)))
    lancedb.connect(str(small)).drop_table(LABELS, ignore_missing=True)
    invoke("review", "import", tmp_path / "few.csv", "--db", small)
    code, out = invoke("safety", "calibrate", "--db", small)
    assert code == 2 and "at least 30 are needed" in out["error"]
