"""A driver killed with SIGKILL mid-ingest: the next run finishes the job, re-embeds nothing that
was committed, and leaves exactly one row per item and per sampled frame."""

import shutil
import signal
import subprocess
import sys
import textwrap

import lancedb
import pytest
from conftest import MICRO, SAMPLE_PHOTOS, sample_photo, sample_video, write_manifest

from shoplens.pipelines.ingest.job import IngestConfig, ingest
from shoplens.pipelines.store.schemas import FRAMES, ITEMS

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]

# Run in a child process: `ingest` with a LanceDB write patched to SIGKILL the driver at `point`.
CHILD = textwrap.dedent(
    """
    import os, signal, sys, threading
    from shoplens.pipelines.store import database as store
    from shoplens.pipelines.ingest.job import IngestConfig, ingest

    point, manifest, db = sys.argv[1:4]
    calls = {"upsert": 0}
    upsert, replace_frames = store.ItemStore.upsert, store.ItemStore.replace_frames

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def killing_upsert(self, table, rows):
        calls["upsert"] += 1
        if point == "between-frames-and-items" and calls["upsert"] == 2:
            die()  # the second batch's frames are committed, its items are not
        if point == "during-items-write" and calls["upsert"] == 2:
            threading.Timer(0.002, die).start()  # lands somewhere inside the commit
        upsert(self, table, rows)
        if point == "after-two-commits" and calls["upsert"] == 2:
            die()

    store.ItemStore.upsert = killing_upsert
    config = IngestConfig(manifest=manifest, db=db, model="shoplens-micro", pretrained="random",
                          device="cpu", write_batch_rows=4)
    ingest(config)
    sys.exit(0)  # not killed: the test sees the wrong exit code
    """
)


@pytest.fixture
def catalog(tmp_path):
    rows = []
    for n, name in enumerate(SAMPLE_PHOTOS * 2):
        shutil.copyfile(sample_photo(name), tmp_path / f"{n}-{name}")
        rows.append({"item_id": f"p{n}", "kind": "product", "title": f"item {n}", "image": f"{n}-{name}"})
    for n in range(2):
        shutil.copyfile(sample_video("carphone_pristine.mp4"), tmp_path / f"v{n}.mp4")
        rows.append({"item_id": f"v{n}", "kind": "video", "video": f"v{n}.mp4", "frames": "uniform:4"})
    return write_manifest(tmp_path / "catalog.csv", rows)


@pytest.mark.parametrize("point", ["after-two-commits", "between-frames-and-items", "during-items-write"])
def test_killed_driver_resumes_without_loss_or_duplicates(tmp_path, catalog, point):
    db = str(tmp_path / "db")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.run([sys.executable, str(script), point, str(catalog), db], capture_output=True, text=True, timeout=180)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]

    committed = {r["item_id"]: r for r in lancedb.connect(db).open_table(ITEMS).to_arrow().to_pylist()}
    assert 0 < len(committed) < 14  # the kill came after the first commit, before the last

    summary = ingest(IngestConfig(manifest=catalog, db=db, model=MICRO.model, pretrained=MICRO.pretrained, device="cpu"))
    assert summary.ok == 14 and summary.failed == 0
    assert summary.skipped == len(committed) and summary.written == 14 - len(committed)  # nothing embedded twice

    items, frames = (lancedb.connect(db).open_table(name) for name in (ITEMS, FRAMES))
    rows = items.to_arrow().to_pylist()
    assert sorted(r["item_id"] for r in rows) == sorted([f"p{n}" for n in range(12)] + ["v0", "v1"])
    assert all(r["status"] == "ok" and r["vector"] is not None for r in rows)
    for item_id, row in committed.items():  # committed rows were left as they were
        assert next(r for r in rows if r["item_id"] == item_id)["updated_at"] == row["updated_at"]
    keys = [(r["item_id"], r["frame_index"]) for r in frames.to_arrow().to_pylist()]
    assert len(keys) == len(set(keys)) == 8 and {k[0] for k in keys} == {"v0", "v1"}
