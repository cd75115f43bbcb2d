import csv

from shoplens.pipelines.demo import SAMPLE_PRODUCTS, SAMPLE_VIDEOS, build_catalog
from shoplens.pipelines.ingest.manifest import read_manifest


def test_demo_catalog_is_a_valid_manifest_of_shipped_media(tmp_path):
    manifest = build_catalog(tmp_path)
    rows = list(csv.DictReader(manifest.open()))
    assert len(rows) == len(SAMPLE_PRODUCTS) + 1 + len(SAMPLE_VIDEOS)  # and the photo with a phone number painted on
    assert {r["kind"] for r in rows} == {"product", "video", "live"}
    checked = read_manifest(manifest)
    assert set(checked.rows.column("status").to_pylist()) == {"ok"} and checked.rejected == []
    for uri in checked.rows.column("media_uri").to_pylist():
        assert (tmp_path / "media").joinpath(uri.rsplit("/", 1)[-1]).stat().st_size > 1000


def test_the_demos_seller_photo_carries_contact_details_the_shipped_policy_catches(tmp_path):
    import numpy as np
    from PIL import Image

    from shoplens.encoders.ocr import TextReader
    from shoplens.pipelines.demo import CONTACT_PHOTO
    from shoplens.safety.policy import load_policy
    from shoplens.safety.text_rules import TextRules

    build_catalog(tmp_path)
    picture = np.array(Image.open(tmp_path / "media" / CONTACT_PHOTO[1]).convert("RGB"))
    read = "\n".join(line.text for line in TextReader(max_side=640, num_threads=1)(picture))
    assert CONTACT_PHOTO[3][0] in read
    assert {m.rule for m in TextRules(load_policy()).match(read) if m.category == "off_platform_contact"} == {"phone_number"}
