"""`shoplens safety bank add` on a database that already holds items: the new entries reach what
is stored (items and video frames) at once, and a file given twice is one entry."""

import json
import shutil

import cv2
import lancedb
import pytest
from conftest import MICRO, PIXEL_POLICY, ingest_in_process, sample_photo, sample_video, write_manifest
from typer.testing import CliRunner

from shoplens.pipelines.cli import app
from shoplens.pipelines.store.schemas import FRAMES, HASH_BANK, ITEMS

MICRO_FLAGS = ["--model", MICRO.model, "--pretrained", MICRO.pretrained, "--device", "cpu", "--policy", PIXEL_POLICY]


def invoke(*args) -> tuple[int, dict]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, json.loads(result.stdout.strip().splitlines()[-1])


def rows(db, table: str) -> list[dict]:
    return lancedb.connect(db).open_table(table).to_arrow().to_pylist()


def frame_picture(video, frame_index: int, path):
    """One frame of `video`, saved as a picture: a bank entry that only that frame matches."""
    capture = cv2.VideoCapture(str(video))
    capture.set(cv2.CAP_PROP_POS_FRAMES, frame_index)
    ok, frame = capture.read()
    capture.release()
    assert ok
    cv2.imwrite(str(path), frame)
    return path


def test_a_bank_entry_blocks_the_stored_items_and_frames_it_matches_without_a_job(tmp_path):
    """The bank's reach into what is stored, on rows written without Ray: the matching photo and
    the video with a matching frame are blocked with the entry named and the category's risk
    certain (scored rows: item and frame); the frame that matched is marked, its neighbours not;
    what matches nothing is untouched."""
    for name in ("astronaut.png", "coffee.png"):
        shutil.copyfile(sample_photo(name), tmp_path / name)
    shutil.copyfile(sample_video("bikes.mp4"), tmp_path / "bikes.mp4")
    manifest = write_manifest(
        tmp_path / "catalog.csv",
        [
            {"item_id": "astronaut", "kind": "product", "title": "Poster", "image": "astronaut.png"},
            {"item_id": "cup", "kind": "product", "title": "Cup", "image": "coffee.png"},
            {"item_id": "bikes", "kind": "video", "title": "Bikes", "video": "bikes.mp4", "frames": "uniform:4"},
        ],
    )
    db = str(tmp_path / "db")
    ingest_in_process(manifest, db, PIXEL_POLICY)
    before = {(r["item_id"], r["frame_index"]): r for r in rows(db, FRAMES)}
    matched_frame = max(i for item, i in before if item == "bikes")
    code, summary = invoke(
        "safety", "bank", "add", sample_photo("astronaut.png"), frame_picture(tmp_path / "bikes.mp4", matched_frame, tmp_path / "f.png"),
        "--category", "sexual", "--db", db, "--policy", PIXEL_POLICY,
    )  # fmt: skip
    assert code == 0 and (summary["blocked_items"], summary["blocked_frames"]) == (2, 1), summary
    photo_entry, frame_entry = summary["entries"]
    items = {r["item_id"]: r for r in rows(db, ITEMS)}
    assert (items["astronaut"]["decision"], items["astronaut"]["hash_match"]) == ("block", photo_entry)
    assert (items["bikes"]["decision"], items["bikes"]["hash_match"]) == ("block", frame_entry)
    assert items["astronaut"]["risk_sexual"] == items["astronaut"]["risk"] == items["bikes"]["risk_sexual"] == items["bikes"]["risk"] == 1.0
    assert items["astronaut"]["risk_violence"] < 1.0  # only the entry's category is made certain
    assert (items["cup"]["decision"], items["cup"]["hash_match"]) == ("allow", None) and items["cup"]["risk"] < 1.0
    frames = {(r["item_id"], r["frame_index"]): r for r in rows(db, FRAMES)}
    hit = frames[("bikes", matched_frame)]
    assert (hit["hash_match"], hit["risk_sexual"], hit["risk"]) == (frame_entry, 1.0, 1.0)
    for key, frame in frames.items():
        if key != ("bikes", matched_frame):
            assert frame["hash_match"] is None and frame["risk"] == before[key]["risk"], key


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """Three photos and a video, ingested (all `allow` under the pixel policy) before any bank entry."""
    root = tmp_path_factory.mktemp("bank")
    for name in ("astronaut.png", "coffee.png", "chelsea.png"):
        shutil.copyfile(sample_photo(name), root / name)
    shutil.copyfile(sample_video("bikes.mp4"), root / "bikes.mp4")
    manifest = write_manifest(
        root / "catalog.csv",
        [
            {"item_id": "astronaut", "kind": "product", "title": "Poster", "image": "astronaut.png"},
            {"item_id": "cup", "kind": "product", "title": "Cup", "image": "coffee.png"},
            {"item_id": "cat", "kind": "product", "title": "Cat", "image": "chelsea.png"},
            {"item_id": "bikes", "kind": "video", "title": "Bikes", "video": "bikes.mp4", "frames": "uniform:4"},
        ],
    )
    db = root / "db"
    code, summary = invoke("ingest", manifest, "--db", db, *MICRO_FLAGS)
    assert code == 0 and summary["ok"] == 4
    assert {r["item_id"]: r["decision"] for r in rows(db, ITEMS)} == dict.fromkeys(["astronaut", "cup", "cat", "bikes"], "allow")
    return root, db, manifest


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_adding_to_the_bank_blocks_stored_matches_and_a_rerun_keeps_them_blocked(stored, tmp_path):
    root, db, manifest = stored
    # One of the video's sampled frames, saved as a picture: a bank entry that only that frame matches.
    frame_index = min(r["frame_index"] for r in rows(db, FRAMES) if r["item_id"] == "bikes" and r["frame_index"] > 0)
    frame_picture(root / "bikes.mp4", frame_index, tmp_path / "frame.png")
    shutil.copyfile(sample_photo("astronaut.png"), tmp_path / "known.png")

    code, summary = invoke(
        "safety",
        "bank",
        "add",
        tmp_path / "known.png",
        tmp_path / "frame.png",
        tmp_path / "known.png",
        "--category",
        "sexual",
        "--db",
        db,
        "--policy",
        PIXEL_POLICY,
    )
    assert code == 0, summary
    assert summary["added"] == 2 and len(set(summary["entries"])) == 2  # the file given twice is one entry
    assert summary["blocked_items"] == 2 and summary["blocked_frames"] >= 1
    bank = rows(db, HASH_BANK)
    assert sorted(r["entry_id"] for r in bank) == sorted(summary["entries"])

    items = {r["item_id"]: r for r in rows(db, ITEMS)}
    assert items["astronaut"]["decision"] == items["bikes"]["decision"] == "block"
    assert items["astronaut"]["hash_match"] in summary["entries"] and items["bikes"]["hash_match"] in summary["entries"]
    assert items["astronaut"]["risk_sexual"] == items["astronaut"]["risk"] == 1.0
    assert (items["cup"]["decision"], items["cup"]["hash_match"]) == ("allow", None)
    assert (items["cat"]["decision"], items["cat"]["hash_match"]) == ("allow", None)
    matched_frames = [f for f in rows(db, FRAMES) if f["hash_match"] is not None]
    assert {f["item_id"] for f in matched_frames} == {"bikes"} and frame_index in {f["frame_index"] for f in matched_frames}

    # Unchanged items are skipped on a re-run: what the bank decided stays.
    code, again = invoke("ingest", manifest, "--db", db, *MICRO_FLAGS)
    assert code == 0 and again["skipped"] == 4
    assert {r["item_id"]: r["decision"] for r in rows(db, ITEMS)}["astronaut"] == "block"

    # The same file added again is no second row.
    code, repeat = invoke("safety", "bank", "add", tmp_path / "known.png", "--category", "sexual", "--db", db, "--policy", PIXEL_POLICY)
    assert code == 0 and len(rows(db, HASH_BANK)) == 2


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_an_entry_added_while_an_ingest_runs_blocks_what_that_ingest_writes(tmp_path):
    """`bank add` matches what is stored when it runs; an ingest that was embedding then matches
    its own rows against the entries added meanwhile, after its last commit."""
    from shoplens.pipelines.ingest.job import IngestConfig, ingest
    from shoplens.pipelines.moderation.bank_add import add_to_bank
    from shoplens.safety.policy import load_policy

    shutil.copyfile(sample_photo("astronaut.png"), tmp_path / "astronaut.png")
    shutil.copyfile(sample_photo("coffee.png"), tmp_path / "coffee.png")
    manifest = write_manifest(
        tmp_path / "catalog.csv",
        [
            {"item_id": "astronaut", "kind": "product", "image": "astronaut.png"},
            {"item_id": "cup", "kind": "product", "image": "coffee.png"},
        ],
    )
    db = str(tmp_path / "db")
    added = []

    def add_while_running(rows: int) -> None:
        if not added:  # the job has scored its rows and not yet committed them
            added.append(add_to_bank(db, [tmp_path / "astronaut.png"], "sexual", load_policy(PIXEL_POLICY)))

    config = IngestConfig(manifest=manifest, db=db, model=MICRO.model, pretrained=MICRO.pretrained, device="cpu", policy=PIXEL_POLICY)
    summary = ingest(config, on_rows=add_while_running)
    assert summary.ok == 2 and added[0]["added"] == 1 and added[0]["blocked_items"] == 0
    items = {r["item_id"]: r for r in rows(db, ITEMS)}
    assert (items["astronaut"]["decision"], items["astronaut"]["hash_match"]) == ("block", added[0]["entries"][0])
    assert items["cup"]["decision"] == "allow"
