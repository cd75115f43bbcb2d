import logging
import shutil

import pytest
from conftest import photo_bytes, write_manifest

from shoplens.pipelines.ingest.manifest import ManifestError, read_manifest

ROWS = [
    {"item_id": "00123", "kind": "product", "title": " Blue mug ", "image": "astronaut.png", "category": "kitchen", "seller_id": "7"},
    {"item_id": "p2", "kind": "product", "title": "", "image": "coffee.png", "category": None, "seller_id": None},
]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_formats_read_the_same_rows(tmp_path, media_dir, suffix):
    manifest = read_manifest(write_manifest(tmp_path / f"catalog{suffix}", ROWS), media_dir)
    rows = manifest.rows.to_pylist()
    assert [r["item_id"] for r in rows] == ["00123", "p2"]  # ids stay text, zeros kept
    assert rows[0]["title"] == "Blue mug" and rows[1]["title"] is None
    assert rows[0]["media_uri"] == str(media_dir / "astronaut.png")
    assert [r["status"] for r in rows] == ["ok", "ok"] and manifest.rejected == []


def test_relative_paths_resolve_against_the_manifests_folder(media_dir):
    manifest = read_manifest(write_manifest(media_dir / "catalog.csv", ROWS))
    assert manifest.rows.column("media_uri").to_pylist()[1] == str(media_dir / "coffee.png")


def test_missing_required_column(tmp_path):
    with pytest.raises(ManifestError, match=r"missing required column\(s\) \['kind'\]"):
        read_manifest(write_manifest(tmp_path / "m.csv", [{"item_id": "a", "image": "x.jpg"}]))


def test_unreadable_and_unknown_format(tmp_path):
    with pytest.raises(ManifestError, match="cannot read manifest"):
        read_manifest(tmp_path / "missing.csv")
    (tmp_path / "m.xlsx").write_text("x")
    with pytest.raises(ManifestError, match="must be .csv, .jsonl or .parquet"):
        read_manifest(tmp_path / "m.xlsx")


def test_unknown_columns_warn_once(tmp_path, caplog):
    rows = [{**ROWS[0], "price": "3", "colour": "red"}, {**ROWS[1], "price": "4", "colour": "blue"}]
    with caplog.at_level(logging.WARNING):
        read_manifest(write_manifest(tmp_path / "m.csv", rows))
    warnings = [r for r in caplog.records if "unknown column" in r.message]
    assert len(warnings) == 1 and "price" in warnings[0].message and "colour" in warnings[0].message


def test_row_problems_are_row_errors(tmp_path, media_dir):
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"x")
    (media_dir / "escape.jpg").symlink_to(outside)
    rows = [
        {"item_id": "up", "kind": "product", "image": "../secret.jpg"},
        {"item_id": "abs", "kind": "product", "image": "/etc/passwd"},
        {"item_id": "link", "kind": "product", "image": "escape.jpg"},
        {"item_id": "http", "kind": "product", "image": "https://example.com/a.jpg"},
        {"item_id": "fileuri", "kind": "product", "image": (media_dir / "coffee.png").as_uri()},
        {"item_id": "s3", "kind": "product", "image": "s3://bucket/a.jpg"},
        {"item_id": "s3-relative", "kind": "product", "image": "s3:../secret.jpg"},
        {"item_id": "gs-no-bucket", "kind": "product", "image": "gs:/etc/passwd"},
        {"item_id": "other-host", "kind": "product", "image": "file://evil.example/" + str(media_dir / "coffee.png")},
        {"item_id": "noimage", "kind": "product", "image": ""},
        {"item_id": "novideo", "kind": "video", "image": "coffee.png"},
        {"item_id": "badkind", "kind": "service", "image": "coffee.png"},
    ]
    manifest = read_manifest(write_manifest(tmp_path / "m.csv", rows), media_dir)
    got = {r["item_id"]: r for r in manifest.rows.to_pylist()}
    for item_id in ("up", "abs", "link"):
        assert got[item_id]["status"] == "error" and "outside the media root" in got[item_id]["error"]
    assert "scheme 'https://' is not allowed" in got["http"]["error"]
    assert got["fileuri"]["status"] == "ok" and got["fileuri"]["media_uri"] == str(media_dir / "coffee.png")
    assert got["s3"]["status"] == "ok" and got["s3"]["media_uri"] == "s3://bucket/a.jpg"
    assert got["s3-relative"]["error"] == "'s3:../secret.jpg' is not a s3://bucket/key URI"
    assert got["gs-no-bucket"]["error"] == "'gs:/etc/passwd' is not a gs://bucket/key URI"
    assert "names another host (evil.example)" in got["other-host"]["error"]
    assert got["noimage"]["error"] == "a product needs a media path in its 'image' column"
    assert got["novideo"]["error"] == "a video needs a media path in its 'video' column"
    assert got["badkind"]["error"] == "kind must be one of product, video, live, not 'service'"


def test_rows_without_a_usable_key_are_rejected_and_reported(tmp_path, media_dir):
    rows = [ROWS[0], {**ROWS[1], "item_id": ""}, {**ROWS[1], "item_id": "00123"}]
    manifest = read_manifest(write_manifest(tmp_path / "m.csv", rows), media_dir)
    assert manifest.rows.column("item_id").to_pylist() == ["00123"]
    assert manifest.rejected == [
        {"row": 2, "item_id": None, "error": "row has no item_id"},
        {"row": 3, "item_id": "00123", "error": "duplicate item_id: the first row with it was kept"},
    ]


def test_a_sibling_folder_whose_name_starts_with_the_roots_is_outside_it(tmp_path, media_dir):
    """`media-evil` starts with `media`: a root check by string prefix would let it through."""
    evil = tmp_path / "media-evil"
    evil.mkdir()
    (evil / "x.jpg").write_bytes(photo_bytes())
    (media_dir / "to-sibling.jpg").symlink_to(evil / "x.jpg")
    rows = [
        {"item_id": "sibling", "kind": "product", "image": "../media-evil/x.jpg"},
        {"item_id": "sibling-absolute", "kind": "product", "image": str(evil / "x.jpg")},
        {"item_id": "sibling-uri", "kind": "product", "image": (evil / "x.jpg").as_uri()},
        {"item_id": "sibling-link", "kind": "product", "image": "to-sibling.jpg"},
        {"item_id": "inside", "kind": "product", "image": "coffee.png"},
    ]
    got = {r["item_id"]: r for r in read_manifest(write_manifest(tmp_path / "m.csv", rows), media_dir).rows.to_pylist()}
    for item_id in ("sibling", "sibling-absolute", "sibling-uri", "sibling-link"):
        assert got[item_id]["status"] == "error" and "outside the media root" in got[item_id]["error"], got[item_id]
    assert got["inside"]["status"] == "ok" and got["inside"]["media_uri"] == str(media_dir / "coffee.png")


def test_file_uris_are_held_to_the_media_root(tmp_path, media_dir):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(photo_bytes())
    (media_dir / "sub").mkdir()
    shutil.copyfile(media_dir / "coffee.png", media_dir / "sub" / "cup.png")
    refused = {
        "outside": secret.as_uri(),
        "system": "file:///etc/passwd",
        "localhost": "file://localhost" + str(secret),
        "dot-dot": media_dir.as_uri() + "/../secret.jpg",
        "encoded-dot-dot": media_dir.as_uri() + "/%2E%2E/secret.jpg",
        "root-itself-parent": media_dir.parent.as_uri(),
    }
    accepted = {
        "inside": ((media_dir / "coffee.png").as_uri(), media_dir / "coffee.png"),
        "inside-localhost": ("file://localhost" + str(media_dir / "coffee.png"), media_dir / "coffee.png"),
        "inside-sub": ((media_dir / "sub" / "cup.png").as_uri(), media_dir / "sub" / "cup.png"),
        "inside-dot-dot": (media_dir.as_uri() + "/sub/../sub/cup.png", media_dir / "sub" / "cup.png"),
    }
    rows = [{"item_id": k, "kind": "product", "image": v} for k, v in refused.items()]
    rows += [{"item_id": k, "kind": "product", "image": uri} for k, (uri, _) in accepted.items()]
    got = {r["item_id"]: r for r in read_manifest(write_manifest(tmp_path / "m.csv", rows), media_dir).rows.to_pylist()}
    for item_id, uri in refused.items():
        assert got[item_id]["status"] == "error" and "outside the media root" in got[item_id]["error"], got[item_id]
        assert got[item_id]["media_uri"] == uri  # the row keeps what it said, never a resolved path
    for item_id, (_, path) in accepted.items():
        assert (got[item_id]["status"], got[item_id]["media_uri"]) == ("ok", str(path)), got[item_id]


@pytest.mark.parametrize(
    "root, prefix",
    [("s3://shop", ""), ("s3://shop/", ""), ("s3://shop/cat", "/cat"), ("gs://shop/cat//", "/cat"), ("s3://shop/BOX/", "/BOX")],
)
def test_a_remote_media_root_takes_only_relative_paths_inside_it(tmp_path, root, prefix):
    """A local manifest with an `s3://` / `gs://` media root: relative paths become keys under
    the root's prefix (its trailing slashes dropped); a path with a scheme, an absolute path (even
    under a whole bucket) or one that climbs out of the prefix is refused."""
    images = {
        "relative": "img/a.jpg",
        "dotted": "./img/../img/a.jpg",
        "absolute": "/img/a.jpg",
        "climbs": "../a.jpg",
        "https": "https://example.com/img/a.jpg",
        "file": "file:///img/a.jpg",
        "query": "img/a.jpg?v=2",
        "fragment": "img/a.jpg#x",
    }
    rows = [{"item_id": k, "kind": "product", "image": v} for k, v in images.items()]
    got = {r["item_id"]: r for r in read_manifest(write_manifest(tmp_path / "m.csv", rows), root).rows.to_pylist()}
    uri = root.split("://")[0] + "://shop" + prefix + "/img/a.jpg"
    assert (got["relative"]["status"], got["relative"]["media_uri"]) == ("ok", uri)
    assert (got["dotted"]["status"], got["dotted"]["media_uri"]) == ("ok", uri)
    refused = ["absolute", "https", "file", "query", "fragment"] + (["climbs"] if prefix else [])
    for item_id in refused:
        assert got[item_id]["status"] == "error", got[item_id]
        assert got[item_id]["error"] == f"path {images[item_id]!r} is not a relative path inside the remote media root {root}"
    if not prefix:  # `..` cannot leave a whole bucket: it stays at its top
        assert got["climbs"]["media_uri"] == root.rstrip("/") + "/a.jpg"


def test_rows_after_a_rejected_one_are_still_read_and_each_bad_cell_is_its_rows_error(tmp_path, media_dir):
    """The cases at the edges of the path and sampling rules: a bucket-less `s3:///key`; a
    two-letter scheme; a one-letter one, which is a file name with a colon (a Windows drive, on
    Windows), inside the root; a sampling spec that does not parse. Rows after a duplicate and
    after a row without an id are read on."""
    shutil.copyfile(media_dir / "coffee.png", media_dir / "c:cup.png")
    rows = [
        {"item_id": "a", "kind": "product", "image": "coffee.png"},
        {"item_id": "a", "kind": "product", "image": "coffee.png"},
        {"item_id": "no-bucket", "kind": "product", "image": "s3:///key.jpg"},
        {"item_id": "", "kind": "product", "image": "coffee.png"},
        {"item_id": "two-letters", "kind": "product", "image": "ab://host/x.jpg"},
        {"item_id": "drive-letter", "kind": "product", "image": "c:cup.png"},
        {"item_id": "bad-frames", "kind": "video", "video": "clip.mp4", "frames": "every:3"},
    ]
    manifest = read_manifest(write_manifest(tmp_path / "m.csv", rows), media_dir)
    got = {r["item_id"]: r for r in manifest.rows.to_pylist()}
    assert list(got) == ["a", "no-bucket", "two-letters", "drive-letter", "bad-frames"]
    assert [r["row"] for r in manifest.rejected] == [2, 4]
    assert got["no-bucket"]["error"] == "'s3:///key.jpg' is not a s3://bucket/key URI"
    assert got["two-letters"]["error"] == "scheme 'ab://' is not allowed: use a local path, file://, s3:// or gs://"
    assert (got["drive-letter"]["status"], got["drive-letter"]["media_uri"]) == ("ok", str(media_dir / "c:cup.png"))
    assert got["bad-frames"]["status"] == "error" and got["bad-frames"]["error"].startswith("frames: ")
    assert got["bad-frames"]["frames"] == "every:3"  # kept as given, so that the row says what was wrong


@pytest.mark.parametrize("suffix", [".ndjson", ".json", ".JSONL"])
def test_json_lines_under_each_of_their_names_are_read(tmp_path, media_dir, suffix):
    write_manifest(tmp_path / "m.jsonl", ROWS).rename(tmp_path / f"m{suffix}")
    rows = read_manifest(tmp_path / f"m{suffix}", media_dir).rows
    assert rows.column("item_id").to_pylist() == [r["item_id"] for r in ROWS]


def test_a_manifest_without_an_extension_is_refused_saying_so(tmp_path):
    (tmp_path / "catalog").write_text("item_id,kind,image\na,product,x.jpg\n")
    with pytest.raises(ManifestError) as refused:
        read_manifest(tmp_path / "catalog")
    assert str(refused.value) == f"{tmp_path / 'catalog'}: manifest must be .csv, .jsonl or .parquet, not 'no extension'"
