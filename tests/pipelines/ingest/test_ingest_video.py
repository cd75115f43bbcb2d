"""Video and live-segment ingest end to end: real MP4s, generated and damaged files, real Ray and LanceDB."""

import shutil

import lancedb
import numpy as np
import pytest
from conftest import MICRO, PIXEL_POLICY, sample_photo, sample_video, shots_video, write_video

from shoplens.encoders.video import FrameSampling, sample_frames
from shoplens.pipelines.ingest.job import IngestConfig, ingest
from shoplens.pipelines.store.schemas import FRAMES, ITEMS

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


def config(manifest, db, **overrides) -> IngestConfig:
    return IngestConfig(
        manifest=manifest, db=db, model=MICRO.model, pretrained=MICRO.pretrained, device="cpu", policy=PIXEL_POLICY, **overrides
    )


def tables(db):
    connection = lancedb.connect(db)
    return connection.open_table(ITEMS), connection.open_table(FRAMES)


def frames_of(db) -> dict[str, list[dict]]:
    out = {}
    for row in sorted(tables(db)[1].to_arrow().to_pylist(), key=lambda r: (r["item_id"], r["frame_index"])):
        out.setdefault(row["item_id"], []).append(row)
    return out


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    shutil.copyfile(sample_video("bigbuckbunny.mp4"), root / "bunny.mp4")
    shutil.copyfile(sample_video("bikes.mp4"), root / "bikes.mp4")
    shutil.copyfile(sample_photo("coffee.png"), root / "cup.png")
    shots_video(root / "shots.avi")
    write_video(root / "short.avi", [(i * 40, 0, 0) for i in range(5)])
    whole = write_video(root / "whole.avi", [(i * 4, 100, 100) for i in range(60)]).read_bytes()
    (root / "truncated.avi").write_bytes(whole[: len(whole) // 2])
    (root / "empty.mp4").write_bytes(b"")
    (root / "random.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
    write_video(root / "no-frames.avi", [])
    rows = [
        "item_id,kind,title,image,video,frames",
        "bunny,video,Bunny plush toy review,,bunny.mp4,",
        "bikes,live,Bike shop live stream,,bikes.mp4,fps:1",
        "shots,video,,,shots.avi,scene",
        "short,video,,,short.avi,",
        "truncated,video,,,truncated.avi,fps:25",
        "cup,product,Coffee cup,cup.png,,",
        "empty,video,,,empty.mp4,",
        "random,video,,,random.mp4,",
        "no-frames,live,,,no-frames.avi,",
        "bad-spec,video,,,bikes.mp4,every:3",
    ]
    (root / "catalog.csv").write_text("\n".join(rows) + "\n")
    return root / "catalog.csv"


@pytest.fixture(scope="module")
def ingested(catalog, tmp_path_factory):
    db = str(tmp_path_factory.mktemp("db") / "shop.lance")
    return db, ingest(config(catalog, db))


def test_one_frames_row_per_sampled_frame(ingested, catalog):
    db, summary = ingested
    frames = frames_of(db)
    assert set(frames) == {"bunny", "bikes", "shots", "short", "truncated"}  # the product has none
    expected = {
        "bunny": sample_frames(str(catalog.parent / "bunny.mp4"), FrameSampling.parse("uniform:8"), 64),
        "bikes": sample_frames(str(catalog.parent / "bikes.mp4"), FrameSampling.parse("fps:1"), 64),
        "shots": sample_frames(str(catalog.parent / "shots.avi"), FrameSampling.parse("scene"), 64),
    }
    for item_id, sampled in expected.items():
        assert [r["frame_index"] for r in frames[item_id]] == list(sampled.frame_index)
        np.testing.assert_allclose([r["timestamp_s"] for r in frames[item_id]], sampled.timestamp_s, atol=1e-5)
    assert len(frames["bunny"]) == 8 and len(frames["bikes"]) == 10 and len(frames["shots"]) == 4
    for rows in frames.values():
        assert all(np.diff([r["timestamp_s"] for r in rows]) > 0)
        assert all(abs(np.linalg.norm(r["vector"]) - 1) < 1e-5 for r in rows)
        assert {r["model"] for r in rows} == {"open_clip/shoplens-micro/random-seed0"}
    assert summary.ok == 6


def test_video_vector_is_the_renormalised_mean_of_its_frames(ingested):
    db, _ = ingested
    items = {r["item_id"]: r for r in tables(db)[0].to_arrow().to_pylist()}
    for item_id, rows in frames_of(db).items():
        mean = np.mean([r["vector"] for r in rows], axis=0)
        np.testing.assert_allclose(items[item_id]["vector"], mean / np.linalg.norm(mean), atol=1e-5)
    assert items["bunny"]["text_vector"] is not None and items["shots"]["text_vector"] is None
    assert items["bunny"]["frames"] == "uniform:8" and items["bikes"]["frames"] == "fps:1"


def test_short_and_truncated_videos_land_with_a_note(ingested):
    items = {r["item_id"]: r for r in tables(ingested[0])[0].to_arrow().to_pylist()}
    assert items["short"]["status"] == "ok" and items["short"]["note"] == "5 frames instead of the 8 asked: the clip is that short"
    assert items["truncated"]["status"] == "ok" and "of the 60 frames its header claims" in items["truncated"]["note"]
    assert items["bunny"]["note"] is None


def test_bad_videos_are_row_errors(ingested):
    db, summary = ingested
    items = {r["item_id"]: r for r in tables(db)[0].to_arrow().to_pylist()}
    assert items["empty"]["error"] == "empty file (0 bytes)"
    assert items["random"]["error"].startswith("not a video container shoplens reads")
    assert items["no-frames"]["error"] == "the video yielded no decodable frame"
    assert items["bad-spec"]["error"].startswith("frames: frame sampling must be uniform:N, fps:R or scene")
    for item_id in ("empty", "random", "no-frames", "bad-spec"):
        assert items[item_id]["status"] == "error" and items[item_id]["vector"] is None
    assert summary.failed == 4


def test_rerun_is_a_no_op(ingested, catalog):
    db, _ = ingested
    items, frames = tables(db)
    versions = (items.version, frames.version)
    summary = ingest(config(catalog, db))
    items, frames = tables(db)
    assert (items.version, frames.version) == versions
    assert summary.written == 0 and summary.skipped == 10


def test_resampling_replaces_a_videos_frames(tmp_path):
    shutil.copyfile(sample_video("bikes.mp4"), tmp_path / "bikes.mp4")
    shutil.copyfile(sample_video("carphone_pristine.mp4"), tmp_path / "phone.mp4")
    manifest = tmp_path / "catalog.csv"
    manifest.write_text("item_id,kind,video\nbikes,video,bikes.mp4\nphone,video,phone.mp4\n")
    db = str(tmp_path / "db")
    ingest(config(manifest, db, frames="uniform:8"))
    before = frames_of(db)
    manifest.write_text("item_id,kind,video,frames\nbikes,video,bikes.mp4,uniform:3\nphone,video,phone.mp4,\n")
    summary = ingest(config(manifest, db, frames="uniform:8"))
    after = frames_of(db)
    assert (summary.written, summary.skipped) == (1, 1)
    assert [r["frame_index"] for r in after["bikes"]] == [0, 124, 249]  # the 8 old frames are gone
    assert after["phone"] == before["phone"]
    shutil.copyfile(sample_photo("coffee.png"), tmp_path / "phone.png")
    manifest.write_text("item_id,kind,video,image\nbikes,video,bikes.mp4,\nphone,product,,phone.png\n")
    ingest(config(manifest, db, frames="uniform:3"))
    assert set(frames_of(db)) == {"bikes"}  # no longer a video: its frames went with it
