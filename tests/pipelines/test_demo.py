import csv

from shoplens.pipelines.demo import SAMPLE_PRODUCTS, SAMPLE_VIDEOS, build_catalog
from shoplens.pipelines.ingest.manifest import read_manifest


def test_demo_catalog_is_a_valid_manifest_of_shipped_media(tmp_path):
    manifest = build_catalog(tmp_path)
    rows = list(csv.DictReader(manifest.open()))
    assert len(rows) == len(SAMPLE_PRODUCTS) + len(SAMPLE_VIDEOS)
    assert {r["kind"] for r in rows} == {"product", "video", "live"}
    checked = read_manifest(manifest)
    assert set(checked.rows.column("status").to_pylist()) == {"ok"} and checked.rejected == []
    for uri in checked.rows.column("media_uri").to_pylist():
        assert (tmp_path / "media").joinpath(uri.rsplit("/", 1)[-1]).stat().st_size > 1000
