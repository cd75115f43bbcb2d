"""Manifests, media and the database on object storage: a real S3-compatible server on localhost
(moto's), reached through the usual AWS environment variables. The whole job on S3, submitted to a
cluster, is in test_cluster.py."""

import numpy as np
import pyarrow as pa
import pytest
from conftest import MICRO, photo_bytes
from typer.testing import CliRunner

from shoplens.encoders.decode import MediaDecoder
from shoplens.pipelines.cli import app
from shoplens.pipelines.ingest.manifest import read_manifest
from shoplens.pipelines.ingest.writer import item_rows
from shoplens.pipelines.store.database import ItemStore, StoreError, storage_options
from shoplens.safety.policy import load_policy

CATALOG = b"""item_id,kind,title,image
p1,product,red shoe,img/p1.jpg
p2,product,blue shoe,s3://shop/elsewhere/p2.jpg
p3,product,gone,img/missing.jpg
p4,product,escapes,../../outside.jpg
p5,product,absolute,/etc/passwd
p6,product,query cut,..?/outside.jpg
p7,product,fragment cut,..#/outside.jpg
p8,product,sibling prefix,../cat-evil/x.jpg
p9,product,query in a key,img/p9.jpg?x=1
"""


def test_a_manifest_in_s3_resolves_relative_media_under_its_own_prefix(s3):
    s3.put_object(Bucket="shop", Key="cat/catalog.csv", Body=CATALOG)
    manifest = read_manifest("s3://shop/cat/catalog.csv")
    rows = {r["item_id"]: r for r in manifest.rows.to_pylist()}
    assert rows["p1"]["media_uri"] == "s3://shop/cat/img/p1.jpg"
    assert rows["p2"]["media_uri"] == "s3://shop/elsewhere/p2.jpg"
    assert rows["p3"]["status"] == "ok"  # a missing object is found out when it is read
    # `..?/x` would be read as the key `..` (what follows `?` is a query): refused as the reader parses it.
    for item_id in ("p4", "p5", "p6", "p7", "p8", "p9"):
        assert rows[item_id]["status"] == "error" and "inside the remote media root s3://shop/cat" in rows[item_id]["error"]


def test_media_in_s3_decodes_and_a_missing_object_is_a_row_error(s3):
    s3.put_object(Bucket="shop", Key="media/p1.jpg", Body=photo_bytes())
    batch = {
        "item_id": np.array(["p1", "p2"], dtype=object),
        "kind": np.array(["product", "product"], dtype=object),
        "media_uri": np.array(["s3://shop/media/p1.jpg", "s3://shop/media/nope.jpg"], dtype=object),
        "status": np.array(["ok", "ok"], dtype=object),
        "error": np.array([None, None], dtype=object),
        "known_sha256": np.array([None, None], dtype=object),
        "frames": np.array([None, None], dtype=object),
    }
    out = MediaDecoder(image_size=64)(batch)
    assert out["status"][0] == "ok" and out["pixels"][0].shape == (1, 64, 64, 3)
    assert out["status"][1] == "error" and "cannot read s3://shop/media/nope.jpg" in out["error"][1]


def test_the_store_on_s3_streams_what_it_knows_in_bounded_batches(s3):
    assert storage_options("s3://shop/db") == {"aws_region": "us-east-1", "aws_endpoint": s3.meta.endpoint_url, "allow_http": "true"}
    store = ItemStore("s3://shop/known-db")
    table = store.items(64, load_policy().names)
    ids = [f"p{n}" for n in range(5)]
    stored = {
        "item_id": np.array(ids, dtype=object),
        "kind": np.array(["product"] * 5, dtype=object),
        "title": np.array(["t", None, "t", "t", "t"], dtype=object),
        "category": np.full(5, None, dtype=object),
        "seller_id": np.full(5, None, dtype=object),
        "media_uri": np.array([f"s3://shop/{i}.jpg" for i in ids], dtype=object),
        "media_sha256": np.array([f"sha-{i}" for i in ids], dtype=object),
        "status": np.array(["ok", "ok", "ok", "error", "ok"], dtype=object),
        "error": np.array([None, None, None, "broken", None], dtype=object),
        "note": np.full(5, None, dtype=object),
        "frames": np.full(5, None, dtype=object),
        "vector": np.ones((5, 64), np.float32) / 8,
        "text_vector": np.ones((5, 64), np.float32) / 8,
        "model": np.array(["m"] * 4 + ["other-model"], dtype=object),
    }
    store.upsert(table, item_rows(stored, table.schema))
    manifest = pa.table(
        {
            name: pa.array(values, pa.string())
            for name, values in {  # as read_manifest makes it
                "item_id": ["p0", "p1", "p2", "p3", "p4", "new"],
                "kind": ["product"] * 6,
                "title": ["t", None, "changed", "t", "t", "t"],
                "category": [None] * 6,
                "seller_id": [None] * 6,
                "media_uri": [f"s3://shop/p{n}.jpg" for n in range(5)] + ["s3://shop/new.jpg"],
                "frames": [None] * 6,
                "status": ["ok"] * 6,
                "error": [None] * 6,
            }.items()
        }
    )
    known = {r["item_id"]: r for r in store.mark_unchanged(table, manifest, "m", scan_rows=2).to_pylist()}
    assert set(known) == set(manifest["item_id"].to_pylist())
    assert (known["p0"]["known_sha256"], known["p0"]["known_status"]) == ("sha-p0", "ok")
    assert known["p1"]["known_sha256"] == "sha-p1"  # no title then, no title now: the same
    assert known["p2"]["known_sha256"] is None and known["p2"]["known_status"] is None  # the title changed
    assert (known["p3"]["known_status"], known["p3"]["known_error"]) == ("error", "broken")
    assert known["p4"]["known_sha256"] is None  # stored with another model
    assert known["new"]["known_sha256"] is None


def test_an_unreachable_endpoint_is_a_clear_configuration_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    with pytest.raises(StoreError, match="s3://shop/db: cannot open the database: .*AWS_ENDPOINT_URL"):
        ItemStore("s3://shop/db")
    result = CliRunner().invoke(
        app, ["ingest", "s3://shop/catalog.csv", "--db", "s3://shop/db", "--model", MICRO.model, "--pretrained", MICRO.pretrained]
    )
    assert result.exit_code == 2
    assert "cannot read manifest s3://shop/catalog.csv" in result.output and "127.0.0.1:9" in result.output
