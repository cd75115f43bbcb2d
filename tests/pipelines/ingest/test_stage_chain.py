"""The ingest chain as the job runs it (decode, then embed and score, then the writer), stage by
stage on real media, without Ray: each stage reads only columns it is given, and adds and drops
exactly the columns it declares."""

import shutil

import numpy as np
import pytest
from conftest import MICRO, PIXEL_POLICY, bad_media, sample_video, write_manifest

from shoplens.encoders.decode import MediaDecoder
from shoplens.pipelines.ingest.manifest import read_manifest
from shoplens.pipelines.ingest.writer import PendingWrites
from shoplens.pipelines.store.database import ItemStore
from shoplens.safety.heads import load_policy_and_heads
from shoplens.safety.scorer import SafetyScorer
from shoplens.safety.stage import EmbedAndScore


def run_declared(stage, batch: dict) -> dict:
    """`stage` given only the columns it declares it reads (reading any other fails), its output
    checked against what it declares it adds and drops; returns `batch` as the stage leaves it."""
    missing = set(stage.reads) - set(batch)
    assert not missing, f"{type(stage).__name__} reads {sorted(missing)}, which no earlier stage made"
    given = {k: batch[k] for k in stage.reads}
    out = stage(given)
    expected = (set(given) | set(stage.adds)) - set(stage.drops)
    assert set(out) == expected, (
        f"{type(stage).__name__} added {sorted(set(out) - expected)} undeclared, left out {sorted(expected - set(out))} it declares"
    )
    return {k: v for k, v in batch.items() if k not in stage.drops} | out


@pytest.fixture(scope="module")
def manifest_batch(tmp_path_factory):
    """The manifest rows the decode stage gets (after the store's skip rule): a photo, a video,
    a live segment, a broken image, and a row the manifest refuses is not among them."""
    folder = tmp_path_factory.mktemp("chain")
    shutil.copyfile(sample_video("bigbuckbunny.mp4"), folder / "clip.mp4")
    (folder / "photo.jpg").write_bytes(bad_media()["notes.txt"])  # a real JPEG
    (folder / "truncated.jpg").write_bytes(bad_media()["truncated.jpg"])
    manifest = write_manifest(
        folder / "manifest.csv",
        [
            {"item_id": "photo", "kind": "product", "title": "a cup", "image": "photo.jpg"},
            {"item_id": "video", "kind": "video", "title": "", "video": "clip.mp4", "frames": "uniform:3"},
            {"item_id": "live", "kind": "live", "title": "live now", "video": "clip.mp4", "frames": "uniform:2"},
            {"item_id": "broken", "kind": "product", "title": "broken", "image": "truncated.jpg"},
        ],
    )
    store = ItemStore(str(folder / "db"))
    policy, heads = load_policy_and_heads(PIXEL_POLICY)
    stage = EmbedAndScore(MICRO, policy, num_threads=1, heads=heads)
    table = store.items(stage.embedder.encoder.dim, policy.names)
    rows = store.mark_unchanged(table, read_manifest(str(manifest)).rows, stage.embedder.encoder.provenance)
    return {name: np.array(rows[name].to_pylist(), dtype=object) for name in rows.column_names}, stage, policy


def test_each_stage_reads_what_the_one_before_made_and_adds_what_it_declares(manifest_batch):
    batch, stage, policy = manifest_batch
    decoded = run_declared(MediaDecoder(stage.embedder.encoder.image_size, fingerprint=True), batch)
    scored = run_declared(stage, decoded)
    assert list(scored["status"]) == ["ok", "ok", "ok", "error"]
    missing = set(PendingWrites.reads) - set(scored)
    assert not missing, f"the writer reads {sorted(missing)}, which no stage made"


def test_the_embed_and_score_stage_declares_what_its_two_parts_do(manifest_batch):
    """The combined stage's declaration follows its parts': the embedder's output, then the
    scorer's, with the pixels the pixel models read dropped before the batch leaves."""
    batch, stage, _ = manifest_batch
    decoded = MediaDecoder(stage.embedder.encoder.image_size, fingerprint=True)(batch)
    embedded = run_declared(stage.embedder, decoded)
    run_declared(stage.scorer, embedded)
    assert "pixels" in embedded and "pixels" in stage.drops and "pixels" not in stage(decoded)


def test_rescoring_reads_stored_pixel_outputs_instead_of_pixels(manifest_batch):
    batch, stage, policy = manifest_batch
    encoder = stage.embedder.encoder
    scored = stage(MediaDecoder(encoder.image_size, fingerprint=True)(batch))
    rescorer = SafetyScorer(policy, encoder.encode_texts, encoder.provenance, stored_pixel_scores=True)
    assert "pixels" not in rescorer.reads and "frame_signal_scores" in rescorer.reads
    again = run_declared(rescorer, {k: v for k, v in scored.items() if k not in rescorer.adds})
    np.testing.assert_allclose(again["risk"].astype(float), scored["risk"].astype(float), rtol=1e-5)
