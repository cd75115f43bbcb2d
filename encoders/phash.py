"""PDQ perceptual hashes (Meta's ThreatExchange hash): 256 bits that survive resizing,
re-encoding and small crops, so a copy of known media matches at a small Hamming distance.

Hashes are taken on the whole picture (before the model's centre crop), downscaled first:
PDQ reduces every image to 64x64 itself, and a smaller input costs less.
"""

from __future__ import annotations

import numpy as np

PDQ_BITS = 256
MAX_SIDE = 512  # PDQ's own reference hasher downsamples to this before hashing
MIN_SIDE = 5  # the reference hashes nothing smaller


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


def pdq_bits(images):
    """The PDQ hashes of same-sized RGB uint8 [N, 3, H, W] torch tensors, left on their device:
    (bits uint8 [N, 256] in `pdqhash.compute`'s order, qualities [N]). Meta's reference algorithm
    (luma, two Jarosz box-filter passes, decimation to 64x64, the 16x16 DCT without its DC term,
    bits above the median), batched."""
    import torch

    if len(images) == 0 or min(images.shape[-2:]) < MIN_SIDE:  # as the reference: no hash, quality 0
        zeros = torch.zeros((len(images), PDQ_BITS), dtype=torch.uint8, device=images.device)
        return zeros, torch.zeros(len(images), device=images.device)
    grids = _luma_64x64(images)  # [N, 64, 64]
    dct = _dct_matrix(grids.device)
    coefficients = (dct @ grids @ dct.T).flatten(1)  # [N, 256]
    bits = (coefficients > coefficients.median(dim=1, keepdim=True).values).to(torch.uint8)
    bits = bits.flip(1)  # the reference writes bit 255 first: this is `pdqhash.compute`'s order
    gradients = _truncated_percent(grids[:, 1:] - grids[:, :-1]).sum(dim=(1, 2)) + _truncated_percent(
        grids[:, :, 1:] - grids[:, :, :-1]
    ).sum(dim=(1, 2))
    return bits, (gradients // 90).clamp(max=100)


def hashes_on_host(bits: list, qualities: list) -> list[tuple[str, int]]:
    """`pdq_bits` rows (device tensors) as (64 hex digits, quality), in one device-to-host transfer."""
    import torch

    if not bits:
        return []
    on_host = torch.cat([torch.stack(bits).float(), torch.stack(qualities).float().view(-1, 1)], dim=1).cpu().numpy()
    return [(np.packbits(row[:PDQ_BITS].astype(np.uint8)).tobytes().hex(), int(row[PDQ_BITS])) for row in on_host]


def _luma_64x64(images):
    """[N, 3, H, W] uint8 -> [N, 64, 64] float32: luma, at most MAX_SIDE on a side (area-averaged,
    as `pdq_hash` does), Jarosz-filtered twice and decimated as the reference hasher does."""
    import torch

    weights = torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)
    luma = (images.float() * weights).sum(dim=1, keepdim=True)
    height, width = luma.shape[-2:]
    scale = MAX_SIDE / max(height, width)
    if scale < 1:
        height, width = max(1, round(height * scale)), max(1, round(width * scale))
        luma = torch.nn.functional.interpolate(luma, size=(height, width), mode="area")
    luma = luma[:, 0]
    across, down = _jarosz_window(width), _jarosz_window(height)
    for _ in range(2):
        luma = _box_filter(_box_filter(luma, across, dim=2), down, dim=1)
    rows = ((torch.arange(64, device=luma.device) + 0.5) * height / 64).long()
    cols = ((torch.arange(64, device=luma.device) + 0.5) * width / 64).long()
    return luma[:, rows][:, :, cols]


def _jarosz_window(length: int) -> int:
    return (length + 2 * 64 - 1) // (2 * 64)


def _box_filter(values, window: int, dim: int):
    """The reference's 1-D box filter along `dim` of [N, H, W]: output i averages inputs
    [i - (window - half), i + half - 1], clipped to the edges, where half = (window + 2) // 2."""
    import torch

    length = values.shape[dim]
    half = (window + 2) // 2
    index = torch.arange(length, device=values.device)
    low = (index - (window - half)).clamp(min=0)
    high = (index + half - 1).clamp(max=length - 1)
    sums = torch.nn.functional.pad(torch.cumsum(values.double(), dim=dim), (1, 0) if dim == 2 else (0, 0, 1, 0))  # [k]: sum of the first k
    shape = [1, 1, 1]
    shape[dim] = length
    total = sums.index_select(dim, high + 1) - sums.index_select(dim, low)
    return (total / (high - low + 1).view(shape)).float()


def _dct_matrix(device):
    """The reference's 16 x 64 DCT-II rows 1..16 (its DC row left out)."""
    import math

    import torch

    rows = torch.arange(1, 17, dtype=torch.float64).view(16, 1)
    cols = torch.arange(64, dtype=torch.float64).view(1, 64)
    return (math.sqrt(2 / 64) * torch.cos(math.pi / 128 * rows * (2 * cols + 1))).float().to(device)


def _truncated_percent(differences):
    """The reference's quality step: int((u - v) * 100 / 255), truncated toward zero, made absolute."""
    return (differences * 100 / 255).trunc().abs()
