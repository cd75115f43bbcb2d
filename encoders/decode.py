"""The decode stage: each row's media, read, hashed and decoded to model-sized frames.

A product image becomes one frame, a video or live segment its sampled frames. Every row leaves
with `pixels` [F, size, size, 3], `frame_index` and `timestamp_s` [F], `media_sha256` and `note`,
and, when fingerprinting, `pdq` and `pdq_quality` [F]: each frame's PDQ hash taken on the whole
picture (the model sees only its centre square). A JPEG left to the embedding device
(`defer_jpegs`) leaves with no frame, its bytes in `encoded`, and [None] and [-1] as its hash and
quality: the embed stage decodes and fingerprints it. With `read_side` set for a kind, its rows also
leave with `whole` [F, H, W, 3]: each frame whole, fitted within that many pixels, for OCR
(None where not read); such images are never left to the device.
"""

from __future__ import annotations

import hashlib

import numpy as np

from shoplens.encoders.device_decode import decode_whole, jpeg_header
from shoplens.encoders.media import ImageLimits, MediaError, check_extension, local_copy, read_media, text_or_none
from shoplens.encoders.rows import ERROR, OK, PRODUCT, SKIPPED
from shoplens.encoders.video import FrameSampling, VideoLimits, sample_frames

MAX_VIDEO_BYTES = 4 * 2**30
DEFER_MAX_BYTES = 2**20  # the largest JPEG left to the embedding device
# What a deferred JPEG carries to the embed stage: its bytes, and its header's orientation and size.
DEFERRED_COLUMNS = ("encoded", "exif_orientation", "jpeg_pixels")


class MediaDecoder:
    """Decode stage. A row whose bytes hash to its `known_sha256` (stored by an earlier run with
    the same model and fields) is marked `skipped` and not decoded. Errors are data: they go to
    the row's `error`, and the batch goes on."""

    reads = ("item_id", "kind", "media_uri", "status", "error", "frames", "known_sha256")
    adds = ("media_sha256", "note", "pixels", "frame_index", "timestamp_s", "pdq", "pdq_quality", "whole", *DEFERRED_COLUMNS)
    drops = ()

    def __init__(
        self,
        image_size: int,
        image_limits: ImageLimits = ImageLimits(),
        video_limits: VideoLimits = VideoLimits(),
        fingerprint: bool = False,
        defer_jpegs: bool = False,
        media_root: str | None = None,
        read_side: dict[str, int] | None = None,
    ):
        self.size = image_size
        self.read_side = read_side or {}  # kind -> the long side of `whole` pictures (0 or absent: none)
        # Local media are opened inside this folder only, checked again at open time (encoders.media).
        self.media_root = None if media_root is None or "://" in media_root else media_root
        self.fingerprint = fingerprint
        # JPEGs the embedding device can decode are left to it (encoders.device_decode), which
        # also fingerprints them: this stage then only reads, hashes and checks headers.
        if defer_jpegs and not fingerprint:
            raise ValueError("defer_jpegs needs fingerprint: the device fingerprints every JPEG it decodes")
        self.defer_jpegs = defer_jpegs
        self.image_limits = image_limits
        self.video_limits = video_limits

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["item_id"])
        out = {
            "status": batch["status"].astype(object),
            "error": np.array([text_or_none(e) for e in batch["error"]], dtype=object),
            "media_sha256": np.full(n, None, dtype=object),
            "note": np.full(n, None, dtype=object),
            "pixels": np.empty(n, dtype=object),
            "whole": np.full(n, None, dtype=object),
            "frame_index": np.empty(n, dtype=object),
            "timestamp_s": np.empty(n, dtype=object),
            "pdq": np.empty(n, dtype=object),
            "pdq_quality": np.empty(n, dtype=object),
            "encoded": np.full(n, None, dtype=object),  # bytes the embed stage decodes on its device
            # ...with its header's orientation and size, so that no header is parsed twice.
            "exif_orientation": np.ones(n, np.int8),
            "jpeg_pixels": np.zeros(n, np.int64),
        }
        for i in range(n):
            frames = None
            if out["status"][i] == OK:
                try:
                    frames = self._decode_row(batch, i, out)
                except MediaError as e:
                    out["status"][i], out["error"][i] = ERROR, str(e)
                except Exception as e:  # a decoder bug must cost one row, never the batch
                    out["status"][i], out["error"][i] = ERROR, f"unexpected {type(e).__name__} while decoding: {e}"
            pixels, index, seconds, hashes, qualities, out["whole"][i] = frames or (
                np.zeros((0, self.size, self.size, 3), np.uint8),
                [],
                [],
                [],
                [],
                None,
            )
            out["pixels"][i] = pixels
            out["frame_index"][i] = np.asarray(index, np.int64)
            out["timestamp_s"][i] = np.asarray(seconds, np.float32)
            out["pdq"][i] = np.array(hashes, dtype=object)  # None where not fingerprinted
            out["pdq_quality"][i] = np.array([-1 if q is None else q for q in qualities], np.int32)
        return {**batch, **out}

    def _decode_row(self, batch, i: int, out: dict) -> tuple | None:
        uri, known = batch["media_uri"][i], text_or_none(batch["known_sha256"][i])
        if batch["kind"][i] == PRODUCT:
            data = read_media(uri, self.image_limits.max_bytes, self.media_root)
            out["media_sha256"][i] = hashlib.sha256(data).hexdigest()
            if out["media_sha256"][i] == known:
                out["status"][i] = SKIPPED
                return None
            check_extension(uri)
            # Larger files (full-size camera photos) are decoded here, at a reduced JPEG scale: their
            # bytes would crowd the object store and the GPU actor's batches.
            side = self.read_side.get(PRODUCT, 0)
            deferrable = self.defer_jpegs and not side and len(data) <= DEFER_MAX_BYTES
            header = jpeg_header(data, self.image_limits) if deferrable else None
            if header and header.on_device:  # decoded and fingerprinted by the embed stage
                out["encoded"][i], out["exif_orientation"][i], out["jpeg_pixels"][i] = data, header.orientation, header.pixels
                return np.zeros((0, self.size, self.size, 3), np.uint8), [0], [0.0], [None], [None], None
            pixels, (hashed, quality), whole = decode_whole(data, self.size, self.image_limits, self.fingerprint, side)
            return pixels[None], [0], [0.0], [hashed], [quality], None if whole is None else whole[None]
        with local_copy(uri, MAX_VIDEO_BYTES, self.media_root) as (path, sha256):
            out["media_sha256"][i] = sha256
            if sha256 == known:
                out["status"][i] = SKIPPED
                return None
            sampling = FrameSampling.parse(batch["frames"][i])
            side = self.read_side.get(batch["kind"][i], 0)
            sampled = sample_frames(path, sampling, self.size, self.video_limits, self.fingerprint, side)
        out["note"][i] = "; ".join(sampled.notes) or None
        return sampled.pixels, sampled.frame_index, sampled.timestamp_s, sampled.pdq, sampled.pdq_quality, sampled.whole
