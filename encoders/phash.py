"""PDQ perceptual hashes (Meta's ThreatExchange hash): 256 bits that survive resizing,
re-encoding and small crops, so a copy of known media matches at a small Hamming distance.

Hashes are taken on the whole picture (before the model's centre crop), downscaled first:
PDQ reduces every image to 64x64 itself, and a smaller input costs less.
"""

from __future__ import annotations

import numpy as np

PDQ_BITS = 256
MAX_SIDE = 512  # PDQ's own reference hasher downsamples to this before hashing


def pdq_hash(rgb: np.ndarray) -> tuple[str, int]:
    """(hash as 64 hex digits, quality 0-100) of a uint8 [H, W, 3] RGB image. Quality below
    about 50 means a flat or featureless picture whose hash matches too easily."""
    import cv2
    import pdqhash

    height, width = rgb.shape[:2]
    scale = MAX_SIDE / max(height, width)
    if scale < 1:
        rgb = cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    bits, quality = pdqhash.compute(np.ascontiguousarray(rgb, dtype=np.uint8))
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex(), int(quality)


def hash_bytes(hashes: list[str]) -> np.ndarray:
    """Hex hashes to uint8 [N, 32], the form Hamming distances are computed on."""
    if not hashes:
        return np.zeros((0, PDQ_BITS // 8), np.uint8)
    return np.frombuffer(bytes.fromhex("".join(hashes)), np.uint8).reshape(len(hashes), PDQ_BITS // 8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances [N, M] between hashes a [N, 32] and b [M, 32] (uint8)."""
    return np.unpackbits(a[:, None, :] ^ b[None, :, :], axis=-1).sum(axis=-1, dtype=np.int32)
