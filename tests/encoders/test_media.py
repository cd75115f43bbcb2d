import re
import time

import numpy as np
import pytest
from conftest import SAMPLE_PHOTOS, bad_media, encode, photo_bytes, sample_photo
from conftest import bomb_png as bomb_side
from PIL import Image

from shoplens.encoders.decode import MediaDecoder
from shoplens.encoders.media import ImageLimits, MediaError, decode_image, read_media
from shoplens.encoders.rows import ERROR, OK, SKIPPED

SIZE = 64


@pytest.mark.parametrize("name", SAMPLE_PHOTOS)
def test_real_photos_decode_to_model_sized_rgb(name):
    pixels = decode_image(sample_photo(name).read_bytes(), SIZE, name=name)
    assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.uint8
    assert pixels.std() > 10  # a photo, not a blank


def solid(mode: str, value, size=(40, 30)):
    return Image.new(mode, size, value)


@pytest.mark.parametrize(
    "image, fmt, expected_rgb",
    [
        (solid("CMYK", (0, 255, 255, 0)), "JPEG", (255, 0, 0)),  # CMYK red
        (solid("L", 128), "PNG", (128, 128, 128)),
        (solid("1", 1), "PNG", (255, 255, 255)),
        (solid("RGBA", (0, 0, 255, 0)), "PNG", (255, 255, 255)),  # fully transparent: white
        (solid("RGBA", (0, 0, 255, 255)), "PNG", (0, 0, 255)),
        (solid("LA", (0, 255)), "PNG", (0, 0, 0)),
        (solid("I;16", 65535), "PNG", (255, 255, 255)),
        (solid("I;16", 32896), "PNG", (128, 128, 128)),
        (solid("I", 1000), "TIFF", (4, 4, 4)),  # 16-bit data in a 32-bit mode: 1000/65535
        (solid("F", 0.5), "TIFF", (128, 128, 128)),
        (solid("RGB", (0, 200, 0)).convert("P"), "PNG", (0, 200, 0)),
        (solid("RGB", (10, 20, 30)), "WEBP", (10, 20, 30)),
        (solid("RGB", (10, 20, 30)), "BMP", (10, 20, 30)),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_every_mode_becomes_rgb(image, fmt, expected_rgb):
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    pixels = decode_image(encode(image, fmt, **kwargs), SIZE)
    assert pixels.shape == (SIZE, SIZE, 3)
    assert np.abs(pixels.reshape(-1, 3).mean(0) - expected_rgb).max() <= 3


def test_palette_transparency_composites_over_white():
    image = solid("P", 0)
    image.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    pixels = decode_image(encode(image, "PNG", transparency=0), SIZE)
    assert (pixels == 255).all()


def test_exif_orientation_is_applied():
    # Landscape: left half red, right half blue; EXIF 6 says "rotate 90 clockwise to display",
    # which puts red on top and blue at the bottom.
    image = Image.new("RGB", (200, 100), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 100, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    pixels = decode_image(encode(image, "JPEG", exif=exif, quality=95), SIZE).astype(int)
    assert pixels[2, SIZE // 2, 0] > 200 and pixels[2, SIZE // 2, 2] < 60  # top row red
    assert pixels[-3, SIZE // 2, 2] > 200 and pixels[-3, SIZE // 2, 0] < 60  # bottom row blue


def test_jpeg_draft_decode_matches_full_decode():
    data = photo_bytes(size=1024)
    fast = decode_image(data, 224).astype(float)
    full_image = Image.open(sample_photo("astronaut.png")).convert("RGB").resize((1024, 1024))
    full = decode_image(encode(full_image, "PNG"), 224).astype(float)
    assert np.abs(fast - full).mean() < 4  # JPEG loss plus DCT-domain downscaling


def test_png_named_jpg_is_decoded_by_its_content():
    assert decode_image(photo_bytes(fmt="PNG"), SIZE, name="photo.jpg").shape == (SIZE, SIZE, 3)


def test_animated_gif_gives_its_first_frame():
    frames = [solid("RGB", (255, 0, 0)), solid("RGB", (0, 0, 255))]
    buffer = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(buffer, SIZE)[0, 0, 0] > 200


@pytest.mark.parametrize(
    "name, message",
    [
        ("empty.jpg", "empty file"),
        ("random.jpg", "not an accepted image format"),
        ("truncated.jpg", "corrupt or truncated JPEG"),
        ("page.jpg", "the file starts with b'<!DOCTYPE"),
        ("notes.txt", "extension '.txt' is not an image type"),
        ("bomb.png", "refused as a decompression bomb: Image size (400000000 pixels)"),
    ],
)
def test_bad_input_is_a_readable_error(name, message):
    with pytest.raises(MediaError, match=re.escape(message)):
        decode_image(bad_media()[name], SIZE, name=name)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF"])
def test_damaged_files_never_raise_anything_but_media_error(fmt):
    rng = np.random.default_rng(7)
    original = photo_bytes(fmt=fmt, size=48)
    for _ in range(150):
        damaged = bytearray(original[: rng.integers(1, len(original) + 1)])
        for position in rng.integers(0, len(damaged), size=rng.integers(1, 8)):
            damaged[position] = rng.integers(0, 256)
        try:
            assert decode_image(bytes(damaged), SIZE).shape == (SIZE, SIZE, 3)
        except MediaError as e:
            assert str(e)


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    data = bomb_side(9_000)  # 81 MP: under Pillow's own limits, over ours
    started = time.perf_counter()
    with pytest.raises(MediaError, match="image is 9000x9000 = 81 MP, over the 80 MP limit"):
        decode_image(data, SIZE)
    assert time.perf_counter() - started < 0.5  # decoding 81 MP would take about a second
    with pytest.raises(MediaError, match="over the 10 MP limit"):
        decode_image(bomb_side(4_000), SIZE, limits=ImageLimits(max_pixels=10_000_000))


def test_pillow_bomb_warning_is_an_error_even_under_our_limit():
    # 100 MP is over Pillow's warning limit (89 MP): refused although our own limit allows it.
    with pytest.raises(MediaError, match="decompression bomb"):
        decode_image(bomb_side(10_000), SIZE, limits=ImageLimits(max_pixels=200_000_000))


def test_byte_limit(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(photo_bytes())
    with pytest.raises(MediaError, match="over the 1,000-byte limit"):
        read_media(str(path), max_bytes=1000)
    with pytest.raises(MediaError, match="over the 1,000-byte limit"):
        decode_image(path.read_bytes(), SIZE, limits=ImageLimits(max_bytes=1000))


def test_missing_file_is_a_readable_error(tmp_path):
    with pytest.raises(MediaError, match="cannot read .*missing.jpg"):
        read_media(str(tmp_path / "missing.jpg"), max_bytes=10**6)


def test_file_uri_is_read(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(b"abc")
    assert read_media(path.as_uri(), max_bytes=10) == b"abc"


def test_decoder_stage_records_errors_and_skips_unchanged(tmp_path):
    import hashlib

    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    good.write_bytes(photo_bytes())
    bad.write_bytes(bad_media()["truncated.jpg"])
    unchanged = tmp_path / "unchanged.jpg"
    unchanged.write_bytes(photo_bytes("coffee.png"))
    batch = {
        "item_id": np.array(["good", "bad", "unchanged", "manifest-error"], dtype=object),
        "kind": np.array(["product"] * 4, dtype=object),
        "frames": np.array([None] * 4, dtype=object),
        "media_uri": np.array([str(good), str(bad), str(unchanged), None], dtype=object),
        "status": np.array([OK, OK, OK, ERROR], dtype=object),
        "error": np.array([None, None, None, "a product needs a media path in its 'image' column"], dtype=object),
        "known_sha256": np.array([None, None, hashlib.sha256(unchanged.read_bytes()).hexdigest(), None], dtype=object),
    }
    out = MediaDecoder(SIZE)(batch)
    assert list(out["status"]) == [OK, ERROR, SKIPPED, ERROR]
    assert "truncated" in out["error"][1] and out["error"][3] == "a product needs a media path in its 'image' column"
    assert out["pixels"][0].shape == (1, SIZE, SIZE, 3) and out["pixels"][0].std() > 10
    assert [len(p) for p in out["pixels"]] == [1, 0, 0, 0] and list(out["frame_index"][0]) == [0]
    assert out["media_sha256"][0] == hashlib.sha256(good.read_bytes()).hexdigest()
    assert out["media_sha256"][3] is None


def decode_rows(root, paths: list, known: list | None = None, kinds: list | None = None) -> dict:
    """The decode stage over rows whose media the manifest resolved inside `root`."""
    n = len(paths)
    batch = {
        "item_id": np.array([f"i{k}" for k in range(n)], dtype=object),
        "kind": np.array(kinds or ["product"] * n, dtype=object),
        "frames": np.array([None if (kinds or ["product"] * n)[k] == "product" else "uniform:2" for k in range(n)], dtype=object),
        "media_uri": np.array([str(p) for p in paths], dtype=object),
        "status": np.array([OK] * n, dtype=object),
        "error": np.array([None] * n, dtype=object),
        "known_sha256": np.array(known or [None] * n, dtype=object),
    }
    return MediaDecoder(SIZE, media_root=str(root))(batch)


@pytest.mark.timeout(20)
def test_a_fifo_or_folder_named_like_media_is_a_row_error_never_a_blocked_read(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "good.jpg").write_bytes(photo_bytes())
    out = decode_rows(tmp_path, [tmp_path / "pipe.jpg", tmp_path / "folder.jpg", tmp_path / "good.jpg"])
    assert list(out["status"]) == [ERROR, ERROR, OK]
    assert "not a regular file (a FIFO)" in out["error"][0] and "not a regular file (a folder)" in out["error"][1]


def test_a_link_swapped_in_after_the_manifest_was_checked_is_not_followed(tmp_path):
    """The manifest resolved root/photo.jpg and root/sub/photo.jpg inside the root; before the
    decode stage opens them, one becomes a link and the other's folder a link, both leading out."""
    from conftest import sample_video

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(photo_bytes("coffee.png"))
    (outside / "photo.jpg").write_bytes(photo_bytes("coffee.png"))
    (outside / "clip.mp4").write_bytes(sample_video().read_bytes())
    (root / "photo.jpg").symlink_to(outside / "secret.jpg")
    (root / "sub").rmdir()
    (root / "sub").symlink_to(outside)
    (root / "clip.mp4").symlink_to(outside / "clip.mp4")
    (root / "kept.jpg").write_bytes(photo_bytes())
    out = decode_rows(
        root,
        [root / "photo.jpg", root / "sub" / "photo.jpg", root / "clip.mp4", root / "kept.jpg"],
        kinds=["product", "product", "video", "product"],
    )
    assert list(out["status"]) == [ERROR, ERROR, ERROR, OK]
    assert "is a symbolic link" in out["error"][0] and "is a symbolic link" in out["error"][2]
    assert f"outside the media root {root}" in out["error"][1]


def test_a_video_is_sampled_from_the_file_that_was_hashed(tmp_path):
    from conftest import sample_video

    (tmp_path / "clip.mp4").write_bytes(sample_video().read_bytes())
    out = decode_rows(tmp_path, [tmp_path / "clip.mp4"], kinds=["video"])
    assert list(out["status"]) == [OK] and len(out["pixels"][0]) == 2


def test_a_stale_known_hash_never_skips(tmp_path):
    import hashlib

    (tmp_path / "a.jpg").write_bytes(photo_bytes())
    stale = hashlib.sha256(photo_bytes("coffee.png")).hexdigest()
    out = decode_rows(tmp_path, [tmp_path / "a.jpg"], known=[stale])
    assert list(out["status"]) == [OK] and len(out["pixels"][0]) == 1
