"""The batched, device-side PDQ hasher against Meta's reference (the pdqhash package)."""

import numpy as np
from conftest import SAMPLE_PHOTOS, sample_photo

from shoplens.encoders.media import load_image
from shoplens.encoders.phash import hamming, hash_bytes, hashes_on_host, pdq_bits, pdq_hash


def full_picture(name: str) -> np.ndarray:
    return np.asarray(load_image(sample_photo(name).read_bytes(), 100_000))


def test_batched_hashes_are_the_reference_hashes_within_a_few_bits():
    import torch

    # Same-sized crops of different photos (one batch): bit for bit. A large photo is downscaled
    # to 512 first, by torch's area filter here and OpenCV's there: a few bits apart.
    crops = [full_picture(name)[:280, :400] for name in SAMPLE_PHOTOS]
    for batch, bits in ((crops, 0), ([full_picture("retina.jpg")], 8)):
        hashes = pdq_hashes(torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2))
        expected = [pdq_hash(image) for image in batch]
        distances = hamming(hash_bytes([h for h, _ in hashes]), hash_bytes([h for h, _ in expected])).diagonal()
        assert distances.max() <= bits, distances
        assert [q for _, q in hashes] == [q for _, q in expected]
    # Under 5 pixels on a side, the reference hashes nothing: quality 0.
    tiny = np.random.default_rng(0).integers(0, 255, (2, 4, 7, 3), dtype=np.uint8)
    assert pdq_hashes(torch.from_numpy(tiny).permute(0, 3, 1, 2)) == [pdq_hash(image) for image in tiny] == [("0" * 64, 0)] * 2
    # A flat picture: its bits are rounding noise, and its quality (0) says so, as the reference's does.
    flat = np.full((1, 120, 90, 3), 128, np.uint8)
    assert pdq_hashes(torch.from_numpy(flat).permute(0, 3, 1, 2))[0][1] == pdq_hash(flat[0])[1] == 0
    # Different photos are far apart: the bits are the pictures', not the algorithm's.
    different = hamming(
        hash_bytes([h for h, _ in pdq_hashes(torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2))]),
        hash_bytes([h for h, _ in pdq_hashes(torch.from_numpy(np.stack(crops[1:] + crops[:1])).permute(0, 3, 1, 2))]),
    )
    assert different.diagonal().min() > 64


def pdq_hashes(images) -> list[tuple[str, int]]:
    bits, qualities = pdq_bits(images)
    return hashes_on_host(list(bits), list(qualities))
