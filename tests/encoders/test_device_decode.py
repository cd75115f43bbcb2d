"""Device-side JPEG decoding, run on the CPU here (the same code nvJPEG runs on a GPU):
the pixels, fingerprints and embeddings of the CPU path, every orientation, and per-image errors."""

import io

import numpy as np
import pytest
from conftest import SAMPLE_PHOTOS, bad_media, encode, photo_bytes, sample_photo

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


def test_progressive_jpegs_are_left_to_the_cpu_decoders():
    """nvJPEG Huffman-decodes a progressive JPEG on the host, one at a time: the decode stage's cores do it."""
    from PIL import Image

    progressive = io.BytesIO()
    Image.open(sample_photo("chelsea.png")).convert("RGB").save(progressive, "JPEG", quality=90, progressive=True)
    assert not jpeg_header(progressive.getvalue()).on_device and jpeg_header(photo_bytes()).on_device
    decoded = decode_on_device([progressive.getvalue()], SIZE, "cpu")  # still decoded, by the CPU path
    assert decoded.errors == [None]
    assert (
        np.abs(decoded.pixels[0].permute(1, 2, 0).numpy().astype(int) - decode_image(progressive.getvalue(), SIZE).astype(int)).max() == 0
    )


def device_fault(fails):
    """A stand-in for a device step that raises as CUDA does (out of memory) when `fails(batch)`."""

    def step(real):
        def faulty(images, *args):
            if fails(images):
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real(images, *args)

        return faulty

    return step


@pytest.mark.parametrize("step", ["_decode_jpegs", "crop_and_resize", "pdq_bits"])
def test_a_failing_device_step_retries_one_by_one_then_falls_back_to_the_cpu(monkeypatch, step):
    """A device fault in any step (decode, resize, fingerprint) fails only its batch: the images
    are retried one by one on the device, and what still fails is decoded on the CPU. Every image
    gets its pixels and fingerprint; none becomes an error, and the call does not raise."""
    from PIL import Image, ImageOps

    import shoplens.encoders.device_decode as device_decode

    images = [photo_bytes(name, size=None) for name in SAMPLE_PHOTOS]
    # the mirror image of the second photo: a group of one shape holds it with the poisoned one
    images.append(encode(ImageOps.mirror(Image.open(sample_photo(SAMPLE_PHOTOS[1])).convert("RGB")), "JPEG", quality=90))
    expected = decode_on_device(images, SIZE, "cpu")
    poisoned = images[1]  # the device fails on every batch holding this image, alone too
    poisoned_shape = picture_shape(poisoned)  # the sample photos' sizes differ

    def holds_poisoned(batch):
        if step == "_decode_jpegs":  # {index: JPEG bytes}
            return poisoned in batch.values()
        # [N, 3, H, W]: the poisoned image alone, or in a group with its mirror image
        return any(tuple(image.shape[-2:]) == poisoned_shape for image in batch) and not (len(batch) == 1 and is_mirror(batch[0]))

    def is_mirror(image):
        return (image.permute(1, 2, 0).numpy() == np.asarray(load_image(images[-1], 100_000))).all()

    monkeypatch.setattr(device_decode, step, device_fault(holds_poisoned)(getattr(device_decode, step)))
    calls = []
    monkeypatch.setattr(device_decode, "decode_on_cpu", record(calls, device_decode.decode_on_cpu))
    decoded = decode_on_device(images, SIZE, "cpu")
    assert decoded.errors == [None] * len(images)
    assert calls == [poisoned]  # only the image the device cannot take went to the CPU
    cpu_pixels, cpu_fingerprint = device_decode.decode_on_cpu(poisoned, SIZE, device_decode.ImageLimits())
    assert (decoded.pixels[1].permute(1, 2, 0).numpy() == cpu_pixels).all() and decoded.fingerprints[1] == cpu_fingerprint
    others = [n for n in range(len(images)) if n != 1]
    assert (decoded.pixels[others] == expected.pixels[others]).all()
    assert [decoded.fingerprints[n] for n in others] == [expected.fingerprints[n] for n in others]


def picture_shape(data: bytes) -> tuple[int, int]:
    from PIL import Image

    width, height = Image.open(io.BytesIO(data)).size
    return height, width


def record(calls: list, real):
    def recorded(data, *args):
        calls.append(data)
        return real(data, *args)

    return recorded


def test_an_image_the_device_and_the_cpu_both_fail_on_is_that_images_error(monkeypatch):
    import shoplens.encoders.device_decode as device_decode

    images = [photo_bytes("astronaut.png"), photo_bytes("chelsea.png")]
    monkeypatch.setattr(device_decode, "crop_and_resize", device_fault(lambda batch: True)(device_decode.crop_and_resize))
    # ...and the host copy of the CPU's pixels fails too, for the second image only
    real_decode = device_decode.decode_on_cpu

    def cpu_then_no_device(data, *args):
        pixels, fingerprint = real_decode(data, *args)
        return (pixels if data == images[0] else pixels[:, :, :2]), fingerprint  # a copy the device refuses

    monkeypatch.setattr(device_decode, "decode_on_cpu", cpu_then_no_device)
    decoded = decode_on_device(images, SIZE, "cpu")
    assert decoded.errors[0] is None and decoded.fingerprints[0]
    assert decoded.errors[1].startswith("the embedding device failed on this image") and decoded.fingerprints[1] is None


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
    stage.keep_pixels = False  # no pixel models follow: the device's pixels go into the model, never to the host
    lean = stage(decoded)
    assert "pixels" not in lean and list(lean["status"]) == list(out["status"])
    np.testing.assert_allclose(lean["vector"], out["vector"], atol=1e-6)
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


def test_jpegs_over_a_megabyte_are_decoded_by_the_decode_stage(tmp_path):
    """Their bytes would crowd the object store and the GPU actor's batches: the decode stage's
    reduced-scale CPU decode takes them, and only what it produces travels."""
    from PIL import Image

    from shoplens.encoders.decode import DEFER_MAX_BYTES, MediaDecoder

    noise = np.random.default_rng(0).integers(0, 255, (1000, 1000, 3), dtype=np.uint8)
    large, small = tmp_path / "large.jpg", tmp_path / "small.jpg"
    Image.fromarray(noise).save(large, "JPEG", quality=100)
    small.write_bytes(photo_bytes())
    assert large.stat().st_size > DEFER_MAX_BYTES > small.stat().st_size and jpeg_header(large.read_bytes()).on_device
    rows = {
        "item_id": ["large", "small"],
        "kind": ["product"] * 2,
        "media_uri": [str(large), str(small)],
        "status": ["ok"] * 2,
        "error": [None] * 2,
        "known_sha256": [None] * 2,
        "frames": [None] * 2,
    }
    decoded = MediaDecoder(SIZE, fingerprint=True, defer_jpegs=True)({k: np.array(v, dtype=object) for k, v in rows.items()})
    assert decoded["encoded"][0] is None and decoded["pixels"][0].shape == (1, SIZE, SIZE, 3) and decoded["pdq"][0][0]
    assert isinstance(decoded["encoded"][1], bytes) and decoded["pixels"][1].shape == (0, SIZE, SIZE, 3)
