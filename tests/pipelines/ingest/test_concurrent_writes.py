"""Writers at once on one database: whatever runs concurrently, the tables hold one row per key."""

import json
import multiprocessing
import os
import shutil
import subprocess
import sys

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from conftest import MICRO, sample_photo, write_manifest

from benchmarks.synthetic import embedding_like, synthetic_items
from shoplens.pipelines.store.database import ItemStore
from shoplens.pipelines.store.schemas import FRAMES, ITEMS, frames_schema
from shoplens.safety.policy import load_policy

DIM = 16
ROWS = 300


def items(tag: int) -> pa.Table:
    rows = synthetic_items(embedding_like(ROWS, DIM, seed=tag))
    return rows.set_column(rows.schema.get_field_index("title"), "title", pa.array([f"writer {tag}"] * ROWS))


def frames(tag: int) -> pa.Table:
    ids = [f"i{k:07d}" for k in range(ROWS // 10)]
    schema = frames_schema(DIM, load_policy().names)
    columns = {
        "item_id": [i for i in ids for _ in range(3)],
        "frame_index": [f for _ in ids for f in range(3)],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(embedding_like(len(ids) * 3, DIM, seed=tag).ravel()), DIM),
    }
    return pa.table({f.name: columns.get(f.name, pa.nulls(len(ids) * 3, f.type)) for f in schema}, schema=schema)


def write(db: str, tag: int, barrier) -> None:
    """Opens (creating or migrating) the tables and writes, at the same moment as the other writer."""
    rows, frame_rows = items(tag), frames(tag)
    store = ItemStore(db)
    names = load_policy().names
    barrier.wait()
    table, frames_table = store.items(DIM, names), store.frames(DIM, names)
    store.replace_frames(frames_table, sorted(set(frame_rows["item_id"].to_pylist())), frame_rows)
    store.upsert(table, rows)


def keys(db: str, table: str, columns: list[str]) -> list[tuple]:
    data = lancedb.connect(db).open_table(table).to_arrow()
    return list(zip(*(data[c].to_pylist() for c in columns)))


@pytest.mark.parametrize("existing", [False, True], ids=["new-tables", "tables-from-an-earlier-version"])
def test_two_writers_upserting_the_same_keys_at_once_leave_one_row_per_key(tmp_db, existing):
    if existing:  # tables made before keys were declared: the store declares them on open
        db = lancedb.connect(tmp_db)
        for name, schema in ((ITEMS, items(0).schema), (FRAMES, frames(0).schema)):
            db.create_table(name, schema=pa.schema([f.remove_metadata() for f in schema]))
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    writers = [context.Process(target=write, args=(tmp_db, tag, barrier)) for tag in (1, 2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
    assert [w.exitcode for w in writers] == [0, 0]
    item_keys = keys(tmp_db, ITEMS, ["item_id"])
    frame_keys = keys(tmp_db, FRAMES, ["item_id", "frame_index"])
    assert len(item_keys) == len(set(item_keys)) == ROWS
    assert len(frame_keys) == len(set(frame_keys)) == ROWS // 10 * 3
    assert set(keys(tmp_db, ITEMS, ["title"])) in ({("writer 1",)}, {("writer 2",)})  # one writer's rows, whole


@pytest.mark.slow
def test_two_ingests_of_shared_items_at_once_leave_one_row_per_item(tmp_path):
    for name in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg"):
        shutil.copyfile(sample_photo(name), tmp_path / name)
    photos = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg"]
    shared = [{"item_id": f"shared-{k}", "kind": "product", "image": photos[k % 4]} for k in range(12)]
    manifests = [
        write_manifest(tmp_path / f"m{n}.csv", shared + [{"item_id": f"own-{n}", "kind": "product", "image": photos[n]}]) for n in (1, 2)
    ]
    shoplens = os.path.join(os.path.dirname(sys.executable), "shoplens")
    flags = ["--db", str(tmp_path / "db"), "--model", MICRO.model, "--pretrained", MICRO.pretrained, "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    jobs = [
        subprocess.Popen([shoplens, "ingest", str(m), *flags], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        for m in manifests
    ]
    outputs = [job.communicate(timeout=300)[0] for job in jobs]
    summaries = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    assert [job.returncode for job in jobs] == [0, 0], summaries
    ids = keys(str(tmp_path / "db"), ITEMS, ["item_id"])
    assert len(ids) == len(set(ids)) == 14
    assert np.all([s["ok"] == 13 for s in summaries])


def test_duplicate_rows_an_earlier_version_left_are_healed_keeping_the_newest(tmp_db):
    import datetime as dt

    rows = items(1)
    older = pa.schema([f.remove_metadata() for f in rows.schema])
    stale = rows.slice(0, 10).set_column(
        rows.schema.get_field_index("updated_at"),
        "updated_at",
        pa.array([dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)] * 10, pa.timestamp("us", tz="UTC")),
    )
    stale = stale.set_column(stale.schema.get_field_index("title"), "title", pa.array(["stale"] * 10))
    table = lancedb.connect(tmp_db).create_table(ITEMS, schema=older)
    table.add(rows.cast(older))
    table.add(stale.cast(older))  # ten ids twice: what concurrent jobs of an earlier version could leave
    ItemStore(tmp_db).items(DIM, load_policy().names)
    stored = keys(tmp_db, ITEMS, ["item_id", "title"])
    assert len(stored) == len({item_id for item_id, _ in stored}) == ROWS
    assert {title for _, title in stored} == {"writer 1"}  # the newest row of each id stayed
