"""The GPU path (bf16 autocast, uint8 batches normalised on the device) against the CPU path.
Deselected by default; run with `pytest -m gpu` on a CUDA host."""

import numpy as np
import pytest
from conftest import SAMPLE_PHOTOS, sample_photo

from shoplens.encoders.clip import ClipEncoder, ClipSpec
from shoplens.encoders.media import decode_image

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("model", ["shoplens-micro", "ViT-B-32"])
def test_bf16_gpu_vectors_match_the_cpu_path(model):
    cpu = ClipEncoder(ClipSpec(model, "random", "cpu"))
    gpu = ClipEncoder(ClipSpec(model, "random", "cuda"), chunk=2)  # chunks copied on a side stream while the one before runs
    assert gpu.device == "cuda" and str(next(gpu.model.parameters()).dtype) == "torch.float32"  # bf16 products, fp32 weights
    pixels = np.stack([decode_image(sample_photo(n).read_bytes(), cpu.image_size) for n in SAMPLE_PHOTOS])
    cosine = (cpu.encode_images(pixels) * gpu.encode_images(pixels)).sum(axis=1)
    assert cosine.min() >= 0.99, cosine
    titles = ["red running shoe", "ceramic coffee cup", "a very long title " * 10]
    assert (cpu.encode_texts(titles) * gpu.encode_texts(titles)).sum(axis=1).min() >= 0.99


def test_nvjpeg_pixels_and_fingerprints_match_the_cpu_decoder():
    from conftest import photo_bytes

    from shoplens.encoders.device_decode import decode_on_device
    from shoplens.encoders.phash import hamming, hash_bytes

    images = [photo_bytes(name, size=None) for name in SAMPLE_PHOTOS]
    gpu, cpu = decode_on_device(images, 224, "cuda"), decode_on_device(images, 224, "cpu")
    assert gpu.errors == cpu.errors == [None] * len(images) and gpu.pixels.is_cuda
    assert (gpu.pixels.cpu().int() - cpu.pixels.int()).abs().float().mean() < 2.0  # decoders' IDCT rounding
    distances = hamming(hash_bytes([h for h, _ in gpu.fingerprints]), hash_bytes([h for h, _ in cpu.fingerprints]))
    assert distances.diagonal().max() <= 8
