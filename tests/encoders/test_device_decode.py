"""Device-side JPEG decoding, run on the CPU here (the same code nvJPEG runs on a GPU):
the pixels and embeddings of the CPU path, every orientation, and per-image errors."""

import io

import numpy as np
import pytest
from conftest import SAMPLE_PHOTOS, bad_media, photo_bytes, sample_photo

from encoders.device_decode import decode_on_device
from encoders.media import decode_image

SIZE = 64


def test_device_pixels_match_the_cpu_path(micro_encoder):
    images = [photo_bytes(name, size=None) for name in SAMPLE_PHOTOS] + [sample_photo("coffee.png").read_bytes()]  # a PNG goes to the CPU
    pixels, errors = decode_on_device(images, SIZE, "cpu")
    assert errors == [None] * len(images)
    device = pixels.permute(0, 2, 3, 1).numpy()
    cpu = np.stack([decode_image(data, SIZE) for data in images])
    assert np.abs(device.astype(int) - cpu.astype(int)).mean() < 2.0  # resampling rounding only
    a, b = micro_encoder.encode_images(device), micro_encoder.encode_images(cpu)
    assert ((a * b).sum(axis=1) >= 0.99).all()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_as_pillow_does(orientation):
    from PIL import Image

    image = Image.open(sample_photo("chelsea.png")).convert("RGB").crop((0, 0, 300, 200))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, exif=exif)
    pixels, errors = decode_on_device([buffer.getvalue()], SIZE, "cpu")
    expected = decode_image(buffer.getvalue(), SIZE)
    assert errors == [None]
    assert np.abs(pixels[0].permute(1, 2, 0).numpy().astype(int) - expected.astype(int)).mean() < 2.0


def test_bad_images_are_per_image_errors_and_the_rest_decode():
    bad = bad_media()
    names = ["good.jpg", *bad]
    images = [photo_bytes(), *bad.values()]
    pixels, errors = decode_on_device(images, SIZE, "cpu")
    assert errors[0] is None and pixels[0].float().mean() > 10
    for name, error in zip(names[1:], errors[1:]):
        if name != "notes.txt":  # by content a JPEG: decoding it is right (the name is checked upstream)
            assert error, name
    assert "over the 80 MP limit" in errors[names.index("bomb.png")] or "bomb" in errors[names.index("bomb.png")]
