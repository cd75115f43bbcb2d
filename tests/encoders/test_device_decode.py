"""Device-side JPEG decoding, run on the CPU here (the same code nvJPEG runs on a GPU):
the pixels, fingerprints and embeddings of the CPU path, every orientation, and per-image errors."""

import io

import numpy as np
import pytest
from conftest import SAMPLE_PHOTOS, bad_media, photo_bytes, sample_photo

from shoplens.encoders.device_decode import decode_on_device, jpeg_header
from shoplens.encoders.media import decode_image, load_image
from shoplens.encoders.phash import hamming, hash_bytes, pdq_hash

SIZE = 64


def test_device_pixels_match_the_cpu_path(micro_encoder):
    images = [photo_bytes(name, size=None) for name in SAMPLE_PHOTOS] + [sample_photo("coffee.png").read_bytes()]  # a PNG goes to the CPU
    decoded = decode_on_device(images, SIZE, "cpu")
    assert decoded.errors == [None] * len(images)
    device = decoded.pixels.permute(0, 2, 3, 1).numpy()
    cpu = np.stack([decode_image(data, SIZE) for data in images])
    assert np.abs(device.astype(int) - cpu.astype(int)).mean() < 2.0  # resampling rounding only
    a, b = micro_encoder.encode_images(device), micro_encoder.encode_images(cpu)
    assert ((a * b).sum(axis=1) >= 0.99).all()
    # Fingerprints of the whole picture at full resolution, as Meta's reference hasher (pdqhash)
    # takes them, within a few of the 256 bits (PDQ calls <= 31 a match).
    expected = [pdq_hash(np.asarray(load_image(data, 100_000))) for data in images]
    distances = hamming(hash_bytes([h for h, _ in decoded.fingerprints]), hash_bytes([h for h, _ in expected])).diagonal()
    assert distances.max() <= 8, distances
    assert [q for _, q in decoded.fingerprints] == [q for _, q in expected]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_as_pillow_does(orientation):
    from PIL import Image

    image = Image.open(sample_photo("chelsea.png")).convert("RGB").crop((0, 0, 300, 200))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, exif=exif)
    decoded = decode_on_device([buffer.getvalue()], SIZE, "cpu")
    expected = decode_image(buffer.getvalue(), SIZE)
    assert decoded.errors == [None]
    assert np.abs(decoded.pixels[0].permute(1, 2, 0).numpy().astype(int) - expected.astype(int)).mean() < 2.0


def test_bad_images_are_per_image_errors_and_the_rest_decode():
    bad = bad_media()
    names = ["good.jpg", *bad]
    images = [photo_bytes(), *bad.values()]
    decoded = decode_on_device(images, SIZE, "cpu")
    assert decoded.errors[0] is None and decoded.pixels[0].float().mean() > 10 and decoded.fingerprints[0]
    for name, error, fingerprint in zip(names[1:], decoded.errors[1:], decoded.fingerprints[1:]):
        if name != "notes.txt":  # by content a JPEG: decoding it is right (the name is checked upstream)
            assert error and fingerprint is None, name
    assert "truncated" in decoded.errors[names.index("truncated.jpg")]  # Pillow's refusal, not a grey fill
    assert "over the 80 MP limit" in decoded.errors[names.index("bomb.png")] or "bomb" in decoded.errors[names.index("bomb.png")]


def test_batches_and_shape_groups_do_not_change_results(monkeypatch):
    """Decoded a few at a time, resized in groups of one shape under a pixel budget: the same
    pixels and fingerprints as all at once, whatever the order of sizes."""
    import shoplens.encoders.device_decode as device_decode

    images = [photo_bytes(name, size=None) for name in (*SAMPLE_PHOTOS, *SAMPLE_PHOTOS[:2])]
    whole = decode_on_device(images, SIZE, "cpu")
    monkeypatch.setattr(device_decode, "DECODE_BATCH", 3)
    monkeypatch.setattr(device_decode, "DECODE_PIXELS", 600_000)  # batches of one or two; the 1411 x 1411 photo alone
    monkeypatch.setattr(device_decode, "GROUP_PIXELS", 1)  # one image per group
    piecewise = decode_on_device(images, SIZE, "cpu")
    assert piecewise.errors == whole.errors == [None] * len(images)
    assert (piecewise.pixels == whole.pixels).all() and piecewise.fingerprints == whole.fingerprints


def test_only_whole_jpegs_go_to_the_device():
    whole = photo_bytes()
    assert jpeg_header(whole).on_device and jpeg_header(whole + b"\0" * 16).on_device
    assert jpeg_header(whole).pixels == 512 * 512
    assert not jpeg_header(whole[: len(whole) // 2]).on_device  # truncated: the CPU refuses it
    assert not jpeg_header(whole + b"SEFT trailer").on_device  # the CPU decodes it as Pillow always has
    assert not jpeg_header(sample_photo("coffee.png").read_bytes()).on_device


def test_deferred_jpegs_through_both_stages_get_the_cpu_paths_pixels_and_fingerprints(micro_encoder, tmp_path):
    """The decode stage leaves JPEGs to the embed stage with their orientation; PNGs, truncated
    JPEGs and wrong names it handles itself, as without deferral."""
    from PIL import Image

    from shoplens.encoders.clip import ClipEmbedder
    from shoplens.encoders.decode import MediaDecoder

    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(sample_photo("chelsea.png")).convert("RGB").save(rotated, "JPEG", quality=95, exif=exif)
    files = {
        "rotated.jpg": rotated.getvalue(),
        "coffee.png": sample_photo("coffee.png").read_bytes(),
        "truncated.jpg": bad_media()["truncated.jpg"],
        "notes.txt": photo_bytes(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    n = len(files)
    rows = {
        "item_id": list(files),
        "kind": ["product"] * n,
        "title": ["a cat"] * n,
        "media_uri": [str(tmp_path / f) for f in files],
        "status": ["ok"] * n,
        "error": [None] * n,
        "known_sha256": [None] * n,
        "frames": [None] * n,
    }
    decoded = MediaDecoder(SIZE, fingerprint=True, defer_jpegs=True)({k: np.array(v, dtype=object) for k, v in rows.items()})
    assert [isinstance(e, bytes) for e in decoded["encoded"]] == [True, False, False, False]
    assert list(decoded["exif_orientation"]) == [6, 1, 1, 1] and list(decoded["jpeg_pixels"]) == [451 * 300, 0, 0, 0]
    stage = ClipEmbedder.__new__(ClipEmbedder)
    stage.encoder, stage.keep_pixels = micro_encoder, True  # the constructor loads the same model
    out = stage(decoded)
    assert list(out["status"]) == ["ok", "ok", "error", "error"] and "encoded" not in out
    assert "truncated" in out["error"][2] and "not an image type" in out["error"][3]

    def distance(a, b):
        return np.abs(a.astype(int) - b.astype(int)).mean()

    # Pillow decodes at a reduced JPEG scale, the device at full size: a few grey levels apart,
    # while the picture unrotated is tens apart.
    assert distance(out["pixels"][0][0], np.rot90(decode_image(files["rotated.jpg"], SIZE))) > 20
    for i, data in enumerate(list(files.values())[:2]):
        assert distance(out["pixels"][i][0], decode_image(data, SIZE)) < 4.0
        expected = pdq_hash(np.asarray(load_image(data, 100_000)))
        assert hamming(hash_bytes([out["pdq"][i][0]]), hash_bytes([expected[0]]))[0, 0] <= 8
