"""Text in pictures: rapidocr (Apache-2.0) with the PP-OCRv6 detection and recognition models and
the orientation classifier that ship inside its wheel, on ONNX Runtime. The bundled files are
named explicitly: rapidocr downloads any model it is not pointed at, and these hosts may have no
network.

The picture is read scaled down to at most `max_side` pixels on its long side (rapidocr's default
detector scales the short side *up* to 736, which makes a product photo several times dearer);
only what is detected is recognised, and lines below `min_confidence` are dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_READ_SIDE = 48  # pixels of the scaled picture's short side: more than one 32-px rounding step
MODEL_FILES = {
    "Det.model_path": "PP-OCRv6_det_small.onnx",
    "Cls.model_path": "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
    "Rec.model_path": "PP-OCRv6_rec_small.onnx",
}


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
