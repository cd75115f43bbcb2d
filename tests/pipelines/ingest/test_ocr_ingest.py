"""Text in pictures through the whole job: a real local Ray with its OCR pool, rapidocr's bundled
models, a real LanceDB; what is read is stored, judged by the policy's text rules, searchable,
and re-read only when the reader or its settings change."""

import json
import shutil

import lancedb
import numpy as np
import pytest
import yaml
from conftest import MICRO, PIXEL_POLICY, painted, ray_job, sample_photo, text_video, write_manifest
from PIL import Image
from typer.testing import CliRunner

from shoplens.encoders.ocr import ocr_provenance
from shoplens.encoders.rows import ALLOW, REVIEW
from shoplens.pipelines.cli import app
from shoplens.pipelines.ingest.job import IngestConfig, ingest
from shoplens.pipelines.moderation.rescore import rescore
from shoplens.pipelines.search.searcher import Searcher
from shoplens.pipelines.store.indexes import build_indexes
from shoplens.pipelines.store.schemas import FRAMES, ITEMS

PHONE = "+1 415 555 2671"


def ocr_policy(path, **ocr) -> str:
    """The test's pixel-model policy, reading text, with the shipped off-platform contact rules."""
    document = yaml.safe_load(PIXEL_POLICY.read_text())
    document["version"] = f"test-ocr-{len(ocr)}"
    document["ocr"] = {"enabled": True, **ocr}
    document["categories"]["off_platform_contact"] = {
        "review": 0.5,
        "block": 0.95,
        "text_rules": {"detectors": ["phone_number", "email", "url", "messaging_handle"], "score": 0.9},
    }
    path.write_text(yaml.safe_dump(document))
    return str(path)


def rows(db: str, table: str = ITEMS) -> dict:
    out = {}
    for row in lancedb.connect(db).open_table(table).to_arrow().to_pylist():
        out.setdefault(row["item_id"], []).append(row)
    return {k: v[0] if table == ITEMS else sorted(v, key=lambda f: f["frame_index"]) for k, v in out.items()}


def run(manifest, db, policy) -> dict:
    config = IngestConfig(manifest=manifest, db=db, model=MICRO.model, pretrained=MICRO.pretrained, device="cpu", policy=policy)
    return ingest(config).to_dict()


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A photo with a phone number and a made-up brand painted on, the same photo bare, and a
    video whose overlay shows a messaging handle from its third second; ingested once."""
    root = tmp_path_factory.mktemp("ocr-shop")
    photo = np.array(Image.open(sample_photo("astronaut.png")).convert("RGB"))
    Image.fromarray(painted(photo, ["MOONSTONE EDITION", f"Call {PHONE}"])).save(root / "painted.png")
    Image.fromarray(photo).save(root / "bare.png")
    text_video(root / "clip.avi", [None, None, "Telegram @cheapdeals", "Telegram @cheapdeals"])
    manifest = write_manifest(
        root / "shop.csv",
        [
            {"item_id": "painted", "kind": "product", "title": "astronaut poster", "image": "painted.png"},
            {"item_id": "bare", "kind": "product", "title": "astronaut poster", "image": "bare.png"},
            {"item_id": "clip", "kind": "video", "title": "rocket launch", "video": "clip.avi", "frames": "uniform:4"},
        ],
    )
    db, policy = str(root / "db"), ocr_policy(root / "policy.yaml")
    summary = run(manifest, db, policy)
    return root, manifest, db, policy, summary


@ray_job
def test_a_phone_number_painted_on_a_photo_is_reviewed_saying_what_and_where(shop):
    _, _, db, _, summary = shop
    assert summary["ok"] == 3 and summary["failed"] == 0
    items = rows(db)
    painted_row, bare = items["painted"], items["bare"]
    assert painted_row["decision"] == REVIEW and painted_row["risk_off_platform_contact"] == pytest.approx(0.9)
    [match] = json.loads(painted_row["text_match"])
    assert (match["category"], match["rule"], match["text"], match["source"]) == ("off_platform_contact", "phone_number", PHONE, "image")
    box = np.array(match["box"]).reshape(4, 2)
    assert ((0 <= box) & (box <= 1)).all() and box[:, 1].max() < 0.35  # the sticker near the top
    assert painted_row["ocr_text"].splitlines() == ["MOONSTONE EDITION", f"Call {PHONE}"]
    assert [line["text"] for line in painted_row["ocr_lines"]] == ["MOONSTONE EDITION", f"Call {PHONE}"]
    assert painted_row["ocr_model"] == ocr_provenance(640, 0.5, 10)
    # The same photo without the text: nothing read, nothing matched, allowed.
    assert bare["decision"] == ALLOW and bare["risk_off_platform_contact"] == 0.0 and json.loads(bare["text_match"]) == []
    assert bare["ocr_text"] is None and bare["ocr_lines"] == [] and bare["ocr_model"] == ocr_provenance(640, 0.5, 10)


@ray_job
def test_a_videos_overlay_is_read_per_frame_and_its_match_says_when(shop):
    _, _, db, _, _ = shop
    clip, frames = rows(db)["clip"], rows(db, FRAMES)["clip"]
    assert [[line["text"] for line in f["ocr_lines"]] for f in frames] == [[], [], ["Telegram @cheapdeals"], ["Telegram @cheapdeals"]]
    assert frames[2]["ocr_lines"][0]["timestamp_s"] == pytest.approx(frames[2]["timestamp_s"])
    [match] = json.loads(clip["text_match"])
    assert (match["rule"], match["source"], match["timestamp_s"]) == (
        "messaging_handle",
        "frame",
        pytest.approx(frames[2]["timestamp_s"], abs=1e-3),
    )
    assert clip["decision"] == REVIEW and clip["ocr_text"] == "Telegram @cheapdeals"
    assert clip["evidence_timestamp_s"] == pytest.approx(frames[2]["timestamp_s"])


@ray_job
def test_a_word_only_in_a_picture_finds_its_item_by_keyword_and_hybrid_search(shop):
    _, _, db, _, _ = shop
    build_indexes(db, log=lambda line: None)
    searcher = Searcher(db, device="cpu")
    assert [hit["item_id"] for hit in searcher.by_keywords("moonstone", k=3)] == ["painted"]
    assert searcher.hybrid("moonstone", k=3)[0]["item_id"] == "painted"
    result = CliRunner().invoke(app, ["search", "--db", db, "--text", "moonstone", "--hybrid", "-k", "2", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["results"][0]["item_id"] == "painted"


@ray_job
def test_a_rerun_skips_what_was_read_and_new_ocr_settings_read_everything_again(shop, tmp_path):
    root, manifest, shared, policy, _ = shop
    db = str(shutil.copytree(shared, tmp_path / "db"))  # the other tests keep the shared one as it was
    assert run(manifest, db, policy)["skipped"] == 3
    sharper = ocr_policy(root / "sharper.yaml", max_side=800)
    again = run(manifest, db, sharper)
    assert again["skipped"] == 0 and again["ok"] == 3
    assert {row["ocr_model"] for row in rows(db).values()} == {ocr_provenance(800, 0.5, 10)}
    assert json.loads(rows(db)["painted"]["text_match"])[0]["text"] == PHONE


@ray_job
def test_rescoring_with_a_new_text_rule_reads_the_stored_text_without_reading_pictures_again(shop, tmp_path):
    _, _, shared, policy, _ = shop
    db = str(shutil.copytree(shared, tmp_path / "db"))
    document = yaml.safe_load(open(policy).read())
    document["version"] = "test-ocr-brand-rule"
    document["categories"]["counterfeit"] = {"review": 0.5, "block": 0.95, "text_rules": {"terms": ["moonstone"], "score": 0.7}}
    (tmp_path / "brand.yaml").write_text(yaml.safe_dump(document))
    summary = rescore(db, device="cpu", policy_path=tmp_path / "brand.yaml")
    assert summary["items"] == 3
    items = rows(db)
    assert items["painted"]["risk_counterfeit"] == pytest.approx(0.7) and items["bare"]["risk_counterfeit"] == 0.0
    assert {(m["category"], m["text"]) for m in json.loads(items["painted"]["text_match"])} >= {("counterfeit", "MOONSTONE")}
    assert items["painted"]["ocr_text"].startswith("MOONSTONE") and items["clip"]["decision"] == REVIEW


@ray_job
def test_the_review_export_carries_the_text_and_outlines_the_match_on_the_evidence(shop, tmp_path):
    from label_studio_sdk.label_interface import LabelInterface

    _, _, db, _, _ = shop
    out = tmp_path / "queue"
    result = CliRunner().invoke(app, ["review", "export", "--db", db, "--out", str(out)])
    assert result.exit_code == 0, result.output
    tasks = {t["data"]["item_id"]: t["data"] for t in json.loads((out / "tasks.json").read_text())}
    assert set(tasks) == {"painted", "clip"}  # the bare photo is allowed: not queued
    painted_task = tasks["painted"]
    phone = next(m for m in painted_task["text_match"] if m["rule"] == "phone_number")
    assert painted_task["ocr_text"].endswith(PHONE) and phone["text"] == PHONE
    assert f"off_platform_contact: phone_number '{PHONE}' in image" in painted_task["details"]
    assert "frame at" in tasks["clip"]["details"]
    assert LabelInterface((out / "labeling_config.xml").read_text()).validate_task({"data": painted_task})
    evidence = np.asarray(Image.open(out / painted_task["image"]).convert("RGB")).astype(int)
    box = np.array(phone["box"]).reshape(4, 2) * [evidence.shape[1], evidence.shape[0]]
    left, top = box.min(axis=0).astype(int)
    red = (evidence[..., 0] > 180) & (evidence[..., 1] < 90) & (evidence[..., 2] < 90)
    right, bottom = box.max(axis=0).astype(int)
    assert red[max(0, top - 3) : top + 4, left:right].sum() > 20  # the outline's top edge, on the white sticker
    assert red[top + 6 : bottom - 6, left + 6 : right - 6].sum() == 0  # an outline, not a fill: the text stays legible
    flat = {row["item_id"]: row for row in __import__("pyarrow.parquet").parquet.read_table(out / "review.parquet").to_pylist()}
    assert json.loads(flat["painted"]["text_match"])[0]["rule"] == "phone_number" and "MOONSTONE" in flat["painted"]["ocr_text"]


def test_items_stored_unread_are_unscored_by_a_rescore_whose_policy_reads_text_until_re_ingested(tmp_path, media_dir):
    """A policy that starts reading text between runs: rescoring cannot read pictures, so an item
    stored before is `unscored` saying why (never `allow`), and re-ingesting it reads and scores it."""
    from conftest import ingest_in_process

    manifest = write_manifest(media_dir / "c.csv", [{"item_id": "cup", "kind": "product", "title": "a cup", "image": "coffee.png"}])
    db = str(tmp_path / "db")
    ingest_in_process(manifest, db, PIXEL_POLICY)
    assert rows(db)["cup"]["decision"] == ALLOW and rows(db)["cup"]["ocr_model"] is None
    reading = ocr_policy(tmp_path / "reading.yaml")
    rescore(db, device="cpu", policy_path=reading)
    cup = rows(db)["cup"]
    assert cup["decision"] == "unscored" and "re-ingest it" in cup["safety_error"]
    ingest_in_process(manifest, db, reading)
    cup = rows(db)["cup"]
    assert cup["decision"] != "unscored" and cup["ocr_model"] == ocr_provenance(640, 0.5, 10) and cup["text_match"] is not None
