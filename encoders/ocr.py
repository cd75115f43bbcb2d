"""Text in pictures: rapidocr (Apache-2.0) with the PP-OCRv6 detection and recognition models and
the orientation classifier that ship inside its wheel, on ONNX Runtime. The bundled files are
named explicitly: rapidocr downloads any model it is not pointed at, and these hosts may have no
network.

The picture is read scaled down to at most `max_side` pixels on its long side (rapidocr's default
detector scales the short side *up* to 736, which makes a product photo several times dearer);
only what is detected is recognised, and lines below `min_confidence` are dropped.

`ReadText` is the ingest's OCR stage: it reads each row's `whole` pictures (encoders.decode) and
reads a video frame only once when the next is the same picture (its PDQ hash within
`repeat_distance` bits, and no part of it changed: PDQ barely moves when a line of text is
added): a static overlay over many frames costs one read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np

from shoplens.encoders.rows import OK

CHANGED_LEVELS, CHANGED_SHARE = 20, 0.0005  # what makes a video frame another picture to read (`_unchanged`)
MIN_READ_SIDE = 48  # pixels of the scaled picture's short side: more than one 32-px rounding step
MODEL_FILES = {
    "Det.model_path": "PP-OCRv6_det_small.onnx",
    "Cls.model_path": "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
    "Rec.model_path": "PP-OCRv6_rec_small.onnx",
}


def ocr_provenance(max_side: int, min_confidence: float, repeat_distance: int) -> str:
    """What made a row's text, stored like `model`: a new reader or setting re-reads every item."""
    models = "+".join(MODEL_FILES[key].removesuffix(".onnx") for key in ("Det.model_path", "Rec.model_path"))
    return f"rapidocr-{version('rapidocr')}/{models}@{max_side}px,min{min_confidence:g},repeat{repeat_distance}"


def frames_read(value) -> list[list[dict]] | None:
    """A row's `frame_ocr_lines` as plain lists, whatever a trip through Arrow made of them (arrays,
    NaN for a column of nothing read); None where its pictures were not read."""
    if value is None or isinstance(value, float):
        return None
    return [[{**line, "box": [float(v) for v in line["box"]]} for line in frame] if frame is not None else [] for frame in value]


def frame_text(lines: list[dict]) -> str:
    """A frame's text: its lines in reading order, one a line."""
    return "\n".join(line["text"] for line in lines)


def distinct_lines(frames: list[list[dict]], timestamps) -> list[dict]:
    """An item's lines: each distinct text once, where it first appears, with that frame's time."""
    seen, out = set(), []
    for lines, seconds in zip(frames, timestamps):
        for line in lines:
            if line["text"] not in seen:
                seen.add(line["text"])
                out.append({**line, "timestamp_s": float(seconds)})
    return out


def item_text(frames: list[list[dict]]) -> str:
    """An item's text: its distinct lines in the order they first appear (a product's one picture, in reading order)."""
    return frame_text(distinct_lines(frames, [0.0] * len(frames)))


@dataclass(frozen=True)
class TextLine:
    text: str
    confidence: float
    box: tuple[tuple[float, float], ...]  # its four corners in the picture's pixels, clockwise from top left


class TextReader:
    """OCR of uint8 RGB pictures [H, W, 3]: their text lines in reading order (top to bottom, a
    row's lines left to right)."""

    def __init__(self, max_side: int = 960, min_confidence: float = 0.5, num_threads: int | None = None):
        from pathlib import Path

        import rapidocr

        if max_side < 32:
            raise ValueError(f"max_side must be at least 32 pixels, got {max_side}")
        if not 0 <= min_confidence <= 1:
            raise ValueError(f"min_confidence must be between 0 and 1, got {min_confidence}")
        models = Path(rapidocr.__file__).parent / "models"
        params = {key: str(models / name) for key, name in MODEL_FILES.items()}
        missing = [path for path in params.values() if not Path(path).is_file()]
        if missing:  # never let rapidocr fetch them
            raise FileNotFoundError(f"rapidocr's bundled models are missing: {', '.join(missing)}")
        params |= {
            "Global.log_level": "error",  # "no text detected" is an answer, not a warning
            "Global.text_score": min_confidence,
            "Global.max_side_len": max_side,
            "Det.limit_type": "max",
            "Det.limit_side_len": max_side,
        }
        if num_threads:
            params |= {"EngineConfig.onnxruntime.intra_op_num_threads": num_threads, "EngineConfig.onnxruntime.inter_op_num_threads": 1}
        self.engine = rapidocr.RapidOCR(params=params)
        self.max_side, self.min_confidence = max_side, min_confidence

    def __call__(self, rgb: np.ndarray) -> list[TextLine]:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < 1:
            raise ValueError(f"expected a uint8 RGB picture [H, W, 3], got {rgb.dtype} {rgb.shape}")
        height, width = rgb.shape[:2]
        # Scaled to `max_side`, each side is rounded to a multiple of 32: a banner much thinner
        # than that would round to nothing. Padded below and to the right, the boxes keep their place.
        short = math.ceil(MIN_READ_SIDE * max(height, width) / self.max_side)
        if min(height, width) < short:
            rgb = np.pad(rgb, ((0, max(0, short - height)), (0, max(0, short - width)), (0, 0)), mode="edge")
        result = self.engine(np.ascontiguousarray(rgb[:, :, ::-1]))  # rapidocr takes OpenCV's BGR
        if result.txts is None:
            return []
        return [
            TextLine(text, float(confidence), tuple((float(x), float(y)) for x, y in box))
            for text, confidence, box in zip(result.txts, result.scores, result.boxes)
            if text.strip() and confidence >= self.min_confidence
        ]


class ReadText:
    """OCR stage. Reads `status`, `whole` (per row, [F, H, W, 3] or None where not read) and
    `pdq`; adds `frame_ocr_lines` (per row, per frame, a list of {text, confidence, box}, the box's
    four corners as fractions of the picture's width and height), `ocr_error`, and `ocr_model`
    (`ocr_provenance`, where read); drops `whole`. A row OCR fails on keeps its error in
    `ocr_error` and no `ocr_model`; the batch goes on."""

    reads = ("status", "whole", "pdq")
    adds = ("frame_ocr_lines", "ocr_error", "ocr_model")
    drops = ("whole",)

    def __init__(self, max_side: int = 640, min_confidence: float = 0.5, repeat_distance: int = 10, num_threads: int | None = None):
        self.reader = TextReader(max_side, min_confidence, num_threads)
        self.repeat_distance = repeat_distance
        self.provenance = ocr_provenance(max_side, min_confidence, repeat_distance)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["status"])
        lines, errors, models = (np.full(n, None, dtype=object) for _ in range(3))
        for i in range(n):
            # Not read: no pictures (None, or NaN where Ray made a column of nothing a float one).
            if batch["status"][i] != OK or not isinstance(batch["whole"][i], (np.ndarray, list)):
                continue
            try:
                lines[i] = self._read_frames(batch["whole"][i], batch["pdq"][i])
                models[i] = self.provenance
            except Exception as e:  # one picture's failure costs its own row
                errors[i] = f"OCR failed: {type(e).__name__}: {e}"
        out = {k: v for k, v in batch.items() if k not in self.drops}
        return {**out, "frame_ocr_lines": lines, "ocr_error": errors, "ocr_model": models}

    def _read_frames(self, pictures, hashes) -> list[list[dict]]:
        from shoplens.encoders.phash import hamming, hash_bytes

        read, last = [], None  # the lines of each frame; the last frame read, and its hash
        for picture, pdq in zip(pictures, hashes):
            picture, this_hash = np.asarray(picture), hash_bytes([pdq]) if pdq is not None else None
            if last is not None and this_hash is not None and last[1] is not None:
                if hamming(this_hash, last[1])[0, 0] <= self.repeat_distance and _unchanged(last[0], picture):
                    read.append(read[-1])  # the same picture as the frame read before: the same text
                    continue
            height, width = picture.shape[:2]
            read.append([_line_dict(line, width, height) for line in self.reader(picture)])
            last = picture, this_hash
        return read


def _unchanged(before: np.ndarray, after: np.ndarray) -> bool:
    """Whether no part of a picture changed: fewer than CHANGED_SHARE of its pixels moved by more
    than CHANGED_LEVELS in any colour (compression noise moves few that far; a line of text, even
    small, faint or of the same brightness, moves a block of them)."""
    if before.shape != after.shape or before.dtype != np.uint8 or after.dtype != np.uint8 or before.ndim != 3:
        return False
    moved = (np.abs(before.astype(np.int16) - after.astype(np.int16)) > CHANGED_LEVELS).any(axis=2)
    return float(moved.mean()) < CHANGED_SHARE


def _line_dict(line: TextLine, width: int, height: int) -> dict:
    box = [round(min(1.0, max(0.0, v / side)), 5) for x, y in line.box for v, side in ((x, width), (y, height))]
    return {"text": line.text, "confidence": round(line.confidence, 4), "box": box}
