"""PDQ hashes and the bank: copies of known media match, unrelated media does not."""

import io

import numpy as np
import pytest
from conftest import SAMPLE_PHOTOS, flip_bits, sample_photo

from shoplens.encoders.media import load_image
from shoplens.encoders.phash import hamming, hash_bytes, pdq_hash
from shoplens.safety.hashbank import HashBank
from shoplens.safety.policy import load_policy

RULES = load_policy().hash_bank  # the shipped policy's: distance <= 31, quality >= 50


def hashed(data: bytes) -> tuple[str, int]:
    return pdq_hash(np.asarray(load_image(data, 512)))


def variants(name: str) -> dict[str, bytes]:
    """Copies a re-upload would make: resized, re-encoded at low quality, slightly cropped."""
    from PIL import Image

    image = Image.open(sample_photo(name)).convert("RGB")
    w, h = image.size

    def jpeg(img, quality=90):
        out = io.BytesIO()
        img.save(out, "JPEG", quality=quality)
        return out.getvalue()

    return {
        "resized": jpeg(image.resize((w // 3, h // 3))),
        "recompressed": jpeg(image, quality=25),
        # PDQ tolerates only slight crops: 1% off each side moves 16-26 of 256 bits, 2% about 40.
        "cropped": jpeg(image.crop((int(w * 0.01), int(h * 0.01), int(w * 0.99), int(h * 0.99)))),
        "png": (lambda b: (image.save(b, "PNG"), b.getvalue())[1])(io.BytesIO()),
    }


def test_hashes_are_256_bits_and_distances_count_differing_bits():
    a, quality = hashed(sample_photo("astronaut.png").read_bytes())
    assert len(a) == 64 and 50 <= quality <= 100
    flipped = bytes.fromhex(a)
    flipped = bytes([flipped[0] ^ 0b111]) + flipped[1:]
    assert hamming(hash_bytes([a]), hash_bytes([a, flipped.hex()])).tolist() == [[0, 3]]


@pytest.mark.parametrize("name", ["astronaut.png", "coffee.png", "chelsea.png"])
def test_the_bank_matches_copies_and_not_unrelated_images(name):
    original, _ = hashed(sample_photo(name).read_bytes())
    bank = HashBank(["entry-1"], ["sexual"], [original])
    copies = [hashed(data) for data in variants(name).values()]
    found, distance = bank.match([h for h, _ in copies], np.array([q for _, q in copies]), RULES)
    assert found.tolist() == [0] * len(copies) and (distance <= RULES.max_distance).all(), distance
    others = [hashed(sample_photo(n).read_bytes()) for n in SAMPLE_PHOTOS if n != name]
    found, _ = bank.match([h for h, _ in others], np.array([q for _, q in others]), RULES)
    assert (found == -1).all()


def test_missing_or_featureless_hashes_never_match():
    flat, quality = pdq_hash(np.full((300, 300, 3), 128, np.uint8))
    assert quality < RULES.min_quality
    bank = HashBank(["flat"], ["sexual"], [flat])
    found, _ = bank.match([flat, None], np.array([quality, -1]), RULES)  # identical hash, but no quality
    assert found.tolist() == [-1, -1]
    assert HashBank().match([flat], np.array([100]), RULES)[0].tolist() == [-1]  # an empty bank


def test_the_shipped_rules_are_31_bits_and_quality_50():
    assert (RULES.max_distance, RULES.min_quality) == (31, 50)


def test_a_hash_matches_at_distance_31_and_not_at_32():
    original, quality = hashed(sample_photo("coffee.png").read_bytes())
    assert quality >= 50
    at = {bits: flip_bits(original, bits) for bits in (0, 1, 30, 31, 32, 33, 64)}
    assert {bits: int(hamming(hash_bytes([original]), hash_bytes([h]))[0, 0]) for bits, h in at.items()} == {b: b for b in at}
    bank = HashBank(["entry-1"], ["violence"], [original])
    order = [32, 31, 33, 30, 64, 1, 0]  # the boundary pair first: no match may be taken from a neighbour
    found, distance = bank.match([at[b] for b in order], np.full(len(order), 100), RULES)
    assert dict(zip(order, found.tolist())) == {32: -1, 31: 0, 33: -1, 30: 0, 64: -1, 1: 0, 0: 0}
    assert dict(zip(order, distance.tolist())) == {32: -1, 31: 31, 33: -1, 30: 30, 64: -1, 1: 1, 0: 0}


def test_the_nearest_entry_within_31_is_the_match():
    original, _ = hashed(sample_photo("coffee.png").read_bytes())
    bank = HashBank(
        ["far", "near", "too-far"], ["violence"] * 3, [flip_bits(original, 31), flip_bits(original, 12, offset=3), flip_bits(original, 32)]
    )
    found, distance = bank.match([original, flip_bits(original, 32, offset=5)], np.array([90, 90]), RULES)
    assert found.tolist()[0] == 1 and distance.tolist()[0] == 12
    # 32 bits from the original, and more than 31 from each entry: nothing.
    assert found.tolist()[1] == -1


def test_quality_49_never_matches_and_50_does():
    original, _ = hashed(sample_photo("coffee.png").read_bytes())
    bank = HashBank(["entry-1"], ["violence"], [original])
    qualities = np.array([49, 50, 0, 100, 51, 49])
    found, distance = bank.match(
        [original, original, original, original, flip_bits(original, 31), flip_bits(original, 1)], qualities, RULES
    )
    assert found.tolist() == [-1, 0, -1, 0, 0, -1]
    assert distance.tolist() == [-1, 0, -1, 0, 31, -1]


def test_a_bank_without_some_entries_keeps_the_others_whole_and_in_order():
    bank = HashBank(["a", "b", "c", "d"], ["sexual", "violence", "weapons", "drugs"], ["0" * 64, "1" * 64, "2" * 64, "3" * 64])
    assert bank.without(["b", "d", "not-in-the-bank"]) == HashBank(["a", "c"], ["sexual", "weapons"], ["0" * 64, "2" * 64])
    assert bank.without([]) == bank and bank.without(bank.entry_ids) == HashBank()
