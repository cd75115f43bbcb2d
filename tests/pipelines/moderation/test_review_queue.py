"""The review loop on a real ingested catalog: export for Label Studio, decisions back in,
calibration, rescoring."""

import csv
import json
import shutil
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import (
    MICRO,
    SAMPLE_PHOTOS,
    ingest_in_process,
    photo_variants,
    pixel_policy,
    ray_job,
    sample_photo,
    sample_video,
    write_manifest,
)
from PIL import Image
from typer.testing import CliRunner

from shoplens.pipelines.cli import app
from shoplens.pipelines.ingest.job import IngestConfig, ingest
from shoplens.pipelines.store.schemas import ITEMS, LABELS
from shoplens.safety.policy import load_policy

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
    rows = [
        {"item_id": f"p{n:03d}", "kind": "product", "title": f"{source.split('.')[0]} shot {n}", "image": file}
        for n, (file, source) in enumerate(photo_variants(root, 150))
    ]
    shutil.copyfile(sample_video("bikes.mp4"), root / "bikes.mp4")
    rows.append({"item_id": "video", "kind": "video", "title": "bike haul", "video": "bikes.mp4", "frames": "uniform:3"})
    shutil.copyfile(sample_photo("coffee.png"), root / "gone.png")
    rows.append({"item_id": "gone", "kind": "product", "title": "cup", "image": "gone.png"})
    db = str(root / "db")
    ingest(
        IngestConfig(
            manifest=write_manifest(root / "catalog.csv", rows), db=db, model=MICRO.model, pretrained=MICRO.pretrained, device="cpu"
        )
    )
    (root / "gone.png").unlink()  # its evidence cannot be made: the export says so and goes on
    return root, db


def rule(db) -> dict[str, bool]:
    """Ground truth on the embeddings: an item violates `weapons` when its nearest sample photo,
    by visual embedding, is the rocket."""
    from conftest import SAMPLE_PHOTOS

    from shoplens.encoders.clip import ClipEncoder
    from shoplens.encoders.media import decode_image

    encoder = ClipEncoder(MICRO, num_threads=1)
    prototypes = encoder.encode_images(
        np.stack([decode_image(sample_photo(n).read_bytes(), encoder.image_size, name=n) for n in SAMPLE_PHOTOS])
    )
    truth = {}
    for item_id, row in items_of(db).items():
        if row["vector"] is not None:
            truth[item_id] = SAMPLE_PHOTOS[int(np.argmax(prototypes @ np.array(row["vector"])))] == VIOLATING_SOURCE
    return truth


def agreement(db, truth: dict[str, bool]) -> float:
    """Share of items the policy flags (review or block) exactly when the rule says they violate."""
    items = items_of(db)
    return float(np.mean([(items[i]["decision"] in ("review", "block")) == violating for i, violating in truth.items()]))


@ray_job
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
    assert "video" in queued  # random weights flag nearly everything
    video = next(t for t in tasks if t["data"]["item_id"] == "video")
    assert f"-at-{video['data']['evidence_timestamp_s']:.1f}s.jpg" in video["data"]["image"]
    flat = pq.read_table(out / "review.parquet")
    assert flat.num_rows == len(tasks) and flat["priority"].to_pylist() == list(range(1, len(tasks) + 1))
    assert (out / "review.csv").read_text().count("\n") == len(tasks) + 1
    assert json.loads((out / "summary.json").read_text())["policy_version"] == load_policy().version

    # --limit keeps the head of the same queue (with review items, in the fast tests below).
    code, limited = invoke("review", "export", "--db", db, "--out", tmp_path / "q2", "--limit", "5", "--include-blocked")
    head = [t["data"]["item_id"] for t in json.loads((tmp_path / "q2" / "tasks.json").read_text())]
    assert code in (0, 3) and limited["queued"] == 5 and head == [t["data"]["item_id"] for t in tasks][:5]


def annotated_export(tasks: list[dict], truth: dict[str, bool]) -> list[dict]:
    """What Label Studio exports once reviewers have annotated the tasks by the rule."""
    return [
        {
            "id": n,
            "data": t["data"],
            "predictions": t["predictions"],
            "annotations": [
                {
                    "id": 1000 + n,
                    "completed_by": {"id": 7, "email": "reviewer@example.com"},
                    "was_cancelled": False,
                    "created_at": "2026-11-23T10:00:00Z",
                    "updated_at": "2026-11-23T10:00:00Z",
                    "result": [
                        {
                            "id": f"r{n}",
                            "type": "choices",
                            "from_name": "violations",
                            "to_name": "evidence",
                            "value": {"choices": ["weapons"] if truth[t["data"]["item_id"]] else ["none"]},
                        }
                    ],
                }
            ],
        }
        for n, t in enumerate(tasks)
        if t["data"]["item_id"] in truth
    ]


@ray_job
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


@ray_job
def test_malformed_imports_are_refused_and_change_nothing(catalog, tmp_path):
    _, db = catalog
    good = tmp_path / "good.csv"
    good.write_text("item_id,category,label\np000,weapons,0\n")
    assert invoke("review", "import", good, "--db", db)[0] == 0
    labels = lambda: lancedb.connect(db).open_table(LABELS).to_arrow().sort_by("item_id").to_pylist()  # noqa: E731
    kept = labels()
    cases = {
        "bad.json": ('[{"data": ', "not valid JSON"),
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


@ray_job
def test_calibrating_on_too_few_labels_is_refused_with_what_is_needed(tmp_path, catalog):
    root, db = catalog
    small = tmp_path / "db"
    shutil.copytree(db, small)
    (tmp_path / "few.csv").write_text("item_id,category,label\n" + "".join(f"p{n:03d},weapons,{n % 2}\n" for n in range(20)))
    lancedb.connect(str(small)).drop_table(LABELS, ignore_missing=True)
    invoke("review", "import", tmp_path / "few.csv", "--db", small)
    code, out = invoke("safety", "calibrate", "--db", small)
    assert code == 2 and "at least 30 are needed" in out["error"]


# --- export and import on a table written without Ray, with a policy that makes review items ---

PREFIX = "/data/local-files/?d=review/"


def midpoint(ranked: list[float], k: int) -> float:
    """A threshold between the k-th and (k+1)-th highest of `ranked` (descending): exactly k reach it."""
    assert ranked[k - 1] - ranked[k] > 1e-4, ranked  # far from both: a last-digit change in a score moves nothing
    return round((ranked[k - 1] + ranked[k]) / 2, 6)


@pytest.fixture(scope="module")
def queue_db(tmp_path_factory):
    """Twelve real photos scored by the pixel models under a policy whose thresholds come from
    their actual scores (learnt on a scratch database): the 4 highest `sexual` risks and the 2
    highest `violence` risks reach review, the highest `sexual` risk blocks. Returns (db,
    thresholds, rows by item_id)."""
    root = tmp_path_factory.mktemp("queue")
    rows = [{"item_id": f"s-{name.split('.')[0]}", "kind": "product", "title": name, "image": name} for name in SAMPLE_PHOTOS]
    for name in SAMPLE_PHOTOS:
        shutil.copyfile(sample_photo(name), root / name)
    rows += [
        {"item_id": f"v-{file[:5]}", "kind": "product", "title": f"={source} shot", "image": file}
        for file, source in photo_variants(root, 6, side=160)
    ]
    manifest = write_manifest(root / "catalog.csv", rows)
    scratch = str(root / "scratch")
    ingest_in_process(manifest, scratch, pixel_policy(root / "learn.yaml", "learn"))
    scores = items_of(scratch).values()
    sexual = sorted((r["risk_sexual"] for r in scores), reverse=True)
    violence = sorted((r["risk_violence"] for r in scores), reverse=True)
    review = {"sexual": midpoint(sexual, 4), "violence": midpoint(violence, 2)}
    block = {"sexual": midpoint(sexual, 1), "violence": 1.0}
    db = str(root / "db")
    ingest_in_process(manifest, db, pixel_policy(root / "queue.yaml", "queue-1", review=review, block=block))
    items = items_of(db)
    assert [r["decision"] for r in items.values()].count("block") == 1
    assert [r["decision"] for r in items.values()].count("review") >= 3, items
    return db, review, items


def exported(db, out, *flags) -> tuple[int, dict, list[dict]]:
    code, summary = invoke("review", "export", "--db", db, "--out", out, *flags)
    return code, summary, json.loads((out / "tasks.json").read_text()) if (out / "tasks.json").exists() else []


def ranked(items: dict, keep) -> list[str]:
    """Item ids that `keep` keeps, highest risk first, then by item_id."""
    return [i for i, _ in sorted(((i, r) for i, r in items.items() if keep(r)), key=lambda p: (-p[1]["risk"], p[0]))]


def test_the_queue_is_the_review_items_highest_risk_first(queue_db, tmp_path):
    db, _, items = queue_db
    code, summary, tasks = exported(db, tmp_path / "all")
    expected = ranked(items, lambda r: r["decision"] == "review")
    assert code == 0 and [t["data"]["item_id"] for t in tasks] == expected and len(expected) >= 3
    assert (summary["queued"], summary["review"], summary["block"]) == (len(expected), len(expected), 0)
    assert pq.read_table(tmp_path / "all" / "review.parquet")["item_id"].to_pylist() == expected
    code, _, with_blocked = exported(db, tmp_path / "blocked", "--include-blocked")
    assert [t["data"]["item_id"] for t in with_blocked] == ranked(items, lambda r: r["decision"] in ("review", "block"))
    assert with_blocked[0]["data"]["decision"] == "block"  # the highest risk


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_limit_keeps_the_head_of_the_queue(queue_db, tmp_path, limit):
    db, _, items = queue_db
    expected = ranked(items, lambda r: r["decision"] == "review")
    assert len(expected) > limit
    code, summary, tasks = exported(db, tmp_path / "q", "--limit", limit)
    assert code == 0 and [t["data"]["item_id"] for t in tasks] == expected[:limit] and summary["queued"] == limit
    assert pq.read_table(tmp_path / "q" / "review.parquet").num_rows == limit
    assert len(list((tmp_path / "q" / "evidence").iterdir())) == limit
    code, _, blocked_first = exported(db, tmp_path / "b", "--limit", 1, "--include-blocked")
    assert [t["data"]["decision"] for t in blocked_first] == ["block"]


def test_categories_keep_items_at_or_over_their_review_thresholds(queue_db, tmp_path):
    db, review, items = queue_db
    queue = ranked(items, lambda r: r["decision"] == "review")
    violence = ranked(items, lambda r: r["decision"] == "review" and r["risk_violence"] >= review["violence"])
    sexual = ranked(items, lambda r: r["decision"] == "review" and r["risk_sexual"] >= review["sexual"])
    assert violence and sexual and set(violence) != set(queue) and set(sexual) != set(queue)
    for flags, expected in ((["violence"], violence), (["sexual"], sexual), (["sexual", "violence"], queue)):
        code, summary, tasks = exported(db, tmp_path / "-".join(flags), *(a for c in flags for a in ("--categories", c)))
        assert code == 0 and [t["data"]["item_id"] for t in tasks] == expected, flags
        assert summary["categories"] == flags
    code, _, tasks = exported(db, tmp_path / "v1", "--categories", "violence", "--limit", 1)
    assert [t["data"]["item_id"] for t in tasks] == violence[:1]
    code, out, _ = exported(db, tmp_path / "bad", "--categories", "weapons")  # not a category of the database's policy
    assert code == 2 and "not policy categories" in out["error"]


def test_evidence_prefix_is_put_before_each_evidence_path(queue_db, tmp_path):
    db, _, _ = queue_db
    code, _, tasks = exported(db, tmp_path / "q", "--evidence-prefix", PREFIX)
    assert code == 0 and tasks
    for entry in tasks:
        image = entry["data"]["image"]
        assert image.startswith(PREFIX + "evidence/") and image.endswith(".jpg")
        assert Image.open(tmp_path / "q" / image[len(PREFIX) :]).size[0] <= 512  # the file the prefix points into
    flat = pq.read_table(tmp_path / "q" / "review.parquet")["evidence"].to_pylist()
    assert flat == [t["data"]["image"][len(PREFIX) :] for t in tasks]  # flat files keep the path inside the export
    _, _, plain = exported(db, tmp_path / "plain")
    assert [t["data"]["image"] for t in plain] == flat


def annotation(choices: list[str], updated_at: str, cancelled: bool = False, reviewer: int = 7) -> dict:
    return {
        "id": 100 * reviewer + int(updated_at[8:10]),
        "completed_by": {"id": reviewer, "email": f"r{reviewer}@example.com"},
        "was_cancelled": cancelled,
        "created_at": "2026-11-20T09:00:00Z",
        "updated_at": updated_at,
        "result": [{"id": "r", "type": "choices", "from_name": "violations", "to_name": "evidence", "value": {"choices": choices}}],
    }


def annotated(tasks: list[dict], annotations: dict[str, list[dict]]) -> list[dict]:
    """Label Studio's export of the exported tasks, with these annotations per item."""
    return [
        {"id": n, "data": t["data"], "predictions": t["predictions"], "annotations": annotations.get(t["data"]["item_id"], [])}
        for n, t in enumerate(tasks)
    ]


def labels_of(db) -> dict[tuple[str, str], dict] | None:
    from shoplens.pipelines.store.database import ItemStore

    table = ItemStore(db).existing(LABELS)
    return None if table is None else {(r["item_id"], r["category"]): r for r in table.to_arrow().to_pylist()}


@pytest.fixture
def review_db(queue_db, tmp_path):
    """A copy of the queue's database (imports write to it), and its exported tasks."""
    db = tmp_path / "db"
    shutil.copytree(queue_db[0], db)
    _, _, tasks = exported(str(db), tmp_path / "queue")
    return str(db), tasks


def test_import_takes_each_tasks_latest_non_cancelled_annotation(review_db, tmp_path):
    db, tasks = review_db
    a, b, c = (t["data"]["item_id"] for t in tasks[:3])
    export = annotated(
        tasks,
        {
            # The latest first: the first annotation is not always the latest.
            a: [annotation(["violence"], "2026-11-25T10:00:00Z", reviewer=1), annotation(["sexual"], "2026-11-21T10:00:00Z", reviewer=2)],
            # The latest in the middle, a later one cancelled: neither the first, the last, nor the cancelled one.
            b: [
                annotation(["sexual"], "2026-11-22T10:00:00Z", reviewer=2),
                annotation(["none"], "2026-11-24T10:00:00Z", reviewer=3),
                annotation(["violence"], "2026-11-20T10:00:00Z", reviewer=4),
                annotation(["sexual", "violence"], "2026-11-26T10:00:00Z", cancelled=True, reviewer=5),
            ],
            c: [annotation(["sexual"], "2026-11-27T10:00:00Z", cancelled=True)],  # only cancelled: not reviewed
        },
    )
    (tmp_path / "export.json").write_text(json.dumps(export))
    code, out = invoke("review", "import", tmp_path / "export.json", "--db", db)
    assert code == 0 and out["labels"] == 4, out
    labels = labels_of(db)
    assert {key: row["violating"] for key, row in labels.items()} == {
        (a, "sexual"): False,
        (a, "violence"): True,
        (b, "sexual"): False,
        (b, "violence"): False,
    }
    assert {labels[(a, "sexual")]["reviewer"], labels[(b, "sexual")]["reviewer"]} == {"r1@example.com", "r3@example.com"}
    assert labels[(b, "violence")]["labeled_at"] == "2026-11-24T10:00:00Z"


@pytest.mark.parametrize(
    "choices, message",
    [
        (["none", "violence"], "`none` chosen together with ['violence']"),
        (["sexual", "none"], "`none` chosen together with ['sexual']"),
        (["weapons"], "unknown categories ['weapons']"),  # a category of the shipped policy, not of this database's
        (["violence", "gambling"], "unknown categories ['gambling']"),
    ],
)
def test_a_malformed_label_studio_export_is_refused_whole(review_db, tmp_path, choices, message):
    db, tasks = review_db
    first, second = (t["data"]["item_id"] for t in tasks[:2])
    export = annotated(
        tasks,
        {
            first: [annotation(["sexual"], "2026-11-24T10:00:00Z")],  # a good task before the bad one
            second: [annotation(choices, "2026-11-24T10:00:00Z")],
        },
    )
    (tmp_path / "export.json").write_text(json.dumps(export))
    code, out = invoke("review", "import", tmp_path / "export.json", "--db", db)
    assert code == 2 and message in out["error"] and f"({second})" in out["error"], out
    assert labels_of(db) is None  # nothing written, not even the good task's labels


def test_rescore_leaves_items_unscored_whose_stored_outputs_lack_a_pixel_model(rescored_db):
    summary = json.loads((Path(rescored_db).parent / "summary.json").read_text())
    assert summary["policy_version"] == "both-models" and summary["decisions"] == {"allow": 2, "unscored": 3}
    items = items_of(rescored_db)
    for item_id in ("astronaut", "chelsea"):  # ingested, but image_safety_s never ran on them
        row = items[item_id]
        assert (row["status"], row["decision"], row["safety_version"]) == ("ok", "unscored", "both-models")
        assert "pixel model image_safety_s did not run when this item was ingested: re-ingest it" in row["safety_error"]
        assert row["risk"] is None and row["risk_sexual"] is None and row["risk_violence"] is None
    for item_id in ("coffee", "rocket"):  # before and after them in the table: scored as usual
        row = items[item_id]
        assert row["decision"] == "allow" and row["safety_error"] is None and 0 < row["risk"] < 0.4
        stored = json.loads(row["signal_scores"])
        assert row["risk_violence"] == pytest.approx(stored["image_safety_s"]["nsfl"], abs=1e-6)
    assert items["broken"]["status"] == "error" and items["broken"]["decision"] == "unscored"


def test_review_csv_cells_are_never_spreadsheet_formulas(queue_db, tmp_path):
    db, _, items = queue_db
    code, summary, _ = exported(db, tmp_path / "q")
    assert code == 0 and summary["queued"] > 0
    with (tmp_path / "q" / "review.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    titles = {r["item_id"]: r["title"] for r in rows}
    formulas = [i for i in titles if items[i]["title"].startswith("=")]
    assert formulas, "the queue holds titles that start with '='"
    assert all(titles[i] == "'" + items[i]["title"] for i in formulas)
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row.values())
    assert pq.read_table(tmp_path / "q" / "review.parquet")["title"].to_pylist() == [items[r["item_id"]]["title"] for r in rows]


@pytest.mark.parametrize(
    ("cell", "safe"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1+1", "'+1+1"),
        ("-2", "'-2"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'=1"),
        ("\r\n=cmd", "'=cmd"),
        ("Red\x00 shoe\x1b", "Red shoe"),
        ("plain", "plain"),
        (0.5, 0.5),
        (None, None),
    ],
)
def test_spreadsheet_safe_cells(cell, safe):
    from shoplens.pipelines.moderation.review_queue import spreadsheet_safe

    assert spreadsheet_safe(cell) == safe


def test_the_queue_holds_ingested_items_no_signal_could_score_first(rescored_db, tmp_path):
    code, summary, tasks = exported(rescored_db, tmp_path / "q")
    assert code == 0
    queued = [t["data"]["item_id"] for t in tasks]
    assert queued[:2] == ["astronaut", "chelsea"] and summary["unscored"] == 2  # ok, but unscored: first
    assert "broken" not in queued  # failed to ingest: in the ingest's errors, nothing to review


def test_evidence_is_never_read_through_a_link_swapped_in_after_the_ingest(tmp_path):
    root, outside = tmp_path / "media", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    shutil.copyfile(sample_photo("coffee.png"), root / "coffee.png")
    shutil.copyfile(sample_photo("chelsea.png"), outside / "private.png")
    manifest = write_manifest(root / "catalog.csv", [{"item_id": "cup", "kind": "product", "image": "coffee.png"}])
    db = str(tmp_path / "db")
    ingest_in_process(manifest, db, pixel_policy(tmp_path / "all.yaml", "review-all", review={"sexual": 0.0, "violence": 0.0}))
    (root / "coffee.png").unlink()
    (root / "coffee.png").symlink_to(outside / "private.png")
    code, summary, _ = exported(db, tmp_path / "q")
    assert code == 3 and summary["evidence_failed"] == 1 and "is a symbolic link" in summary["errors"][0]["error"]
    assert not list((tmp_path / "q" / "evidence").iterdir())


def test_a_table_from_an_earlier_version_is_exported_or_refused_clearly(tmp_db, tmp_path):
    from benchmarks.synthetic import embedding_like, synthetic_items

    rows = synthetic_items(embedding_like(200, 16), moderated=True)
    lancedb.connect(tmp_db).create_table(ITEMS, rows.drop_columns(["hash_match", "pdq", "pdq_quality", "risk_topk_mean"]))
    code, summary, tasks = exported(tmp_db, tmp_path / "q")
    assert code == 3 and summary["queued"] == len(tasks) > 0  # evidence fails: synthetic rows have no media
    assert {t["data"]["hash_match"] for t in tasks} == {None}
    unscored_era = str(tmp_path / "older")
    lancedb.connect(unscored_era).create_table(ITEMS, rows.select(["item_id", "kind", "title", "status", "vector", "model"]))
    code, summary, _ = exported(unscored_era, tmp_path / "q2")
    assert code == 2 and "holds no decisions yet" in summary["error"]


def test_an_export_is_the_queue_as_it_was_when_it_started(queue_db, tmp_path, monkeypatch):
    """Other jobs commit while a long export runs (here, between its chunks: a rescore allows the
    second item, a bank match blocks the third): the export reads one version of the table
    throughout, and is the queue as it stood when it began, whole."""
    from shoplens.encoders.rows import ALLOW, BLOCK
    from shoplens.pipelines.moderation import review_queue
    from shoplens.pipelines.store.database import ItemStore
    from shoplens.pipelines.store.schemas import ITEMS

    _, _, items = queue_db
    db = tmp_path / "db"
    shutil.copytree(queue_db[0], db)
    expected = ranked(items, lambda r: r["decision"] == "review")
    monkeypatch.setattr(review_queue, "FETCH_ROWS", 1)  # one item per read
    evidence = review_queue._evidence

    def evidence_while_others_commit(item, folder):
        if item["item_id"] == expected[0]:
            store = ItemStore(str(db))
            store.update_columns(store.existing(ITEMS), pa.table({"item_id": [expected[1]], "decision": [ALLOW]}))
            store.block_items({expected[2]: "entry"}, {"entry": "sexual"}, BLOCK)
        return evidence(item, folder)

    monkeypatch.setattr(review_queue, "_evidence", evidence_while_others_commit)
    code, summary, tasks = exported(str(db), tmp_path / "q")
    assert code == 0, summary
    assert [t["data"]["item_id"] for t in tasks] == expected and {t["data"]["decision"] for t in tasks} == {"review"}
    assert (summary["queued"], summary["review"], summary["block"]) == (len(expected), len(expected), 0)
    assert items_of(str(db))[expected[1]]["decision"] == ALLOW  # the commits landed: the next export sees them
