import numpy as np
import pytest
from conftest import MICRO, SAMPLE_PHOTOS, sample_photo
from PIL import Image

from shoplens.encoders.clip import ClipEmbedder, ClipEncoder
from shoplens.encoders.media import decode_image
from shoplens.encoders.rows import ERROR, OK


@pytest.fixture(scope="module")
def photos(micro_encoder) -> np.ndarray:
    return np.stack([decode_image(sample_photo(n).read_bytes(), micro_encoder.image_size) for n in SAMPLE_PHOTOS])


def test_image_vectors_are_unit_norm_finite_float32(micro_encoder, photos):
    vectors = micro_encoder.encode_images(photos)
    assert vectors.shape == (len(SAMPLE_PHOTOS), micro_encoder.dim) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])  # different photos, different vectors


def test_batching_does_not_change_vectors(micro_encoder, photos):
    together = micro_encoder.encode_images(photos)
    one_by_one = np.concatenate([micro_encoder.encode_images(photos[i : i + 1]) for i in range(len(photos))])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_random_weights_are_the_same_in_every_encoder(micro_encoder, photos):
    again = ClipEncoder(MICRO, num_threads=1)
    assert again.provenance == micro_encoder.provenance == "open_clip/shoplens-micro/random-seed0"
    np.testing.assert_array_equal(again.encode_images(photos), micro_encoder.encode_images(photos))


def test_preprocessing_matches_open_clips_own_transform(micro_encoder):
    import open_clip
    import torch

    transform = open_clip.image_transform(micro_encoder.image_size, is_train=False)
    for name in SAMPLE_PHOTOS:
        image = Image.open(sample_photo(name))
        ours = micro_encoder.encode_images(decode_image(sample_photo(name).read_bytes(), micro_encoder.image_size)[None])
        with torch.inference_mode():
            theirs = micro_encoder.model.encode_image(transform(image.convert("RGB"))[None])
            theirs = torch.nn.functional.normalize(theirs, dim=-1).numpy()
        assert (ours @ theirs.T).item() > 0.999, name


def test_text_vectors(micro_encoder):
    vectors = micro_encoder.encode_texts(["red running shoe", "red running shoe", "stainless steel kettle"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    assert float(vectors[0] @ vectors[2]) < 0.999
    assert micro_encoder.encode_texts([]).shape == (0, micro_encoder.dim)


def test_short_text_path_equals_open_clips_encode_text(micro_encoder):
    import torch

    titles = ["mug", "a very long title " * 20, "red running shoe, size 42, free shipping", ""]
    with torch.inference_mode():
        reference = micro_encoder.model.encode_text(micro_encoder.tokenizer(titles))
        reference = torch.nn.functional.normalize(reference, dim=-1).numpy()
    np.testing.assert_allclose(micro_encoder.encode_texts(titles), reference, atol=1e-5)
    np.testing.assert_allclose(micro_encoder.encode_texts(titles[:1]), reference[:1], atol=1e-5)


def test_thread_count_follows_the_cores_given():
    import torch

    ClipEncoder(MICRO, num_threads=1)
    assert torch.get_num_threads() == 1


def test_images_encoded_in_chunks_equal_one_batch(micro_encoder, photos):
    # The path that, on a GPU, copies a chunk while the one before is encoded.
    chunked = ClipEncoder(MICRO, chunk=2)
    assert chunked.chunk == 2 and micro_encoder.chunk >= len(photos)
    np.testing.assert_allclose(chunked.encode_images(photos), micro_encoder.encode_images(photos), atol=1e-6)
    assert chunked.encode_images(photos[:0]).shape == (0, chunked.dim)
    with pytest.raises(ValueError, match="chunk must be at least 1"):
        ClipEncoder(MICRO, chunk=0)


def test_embed_stage_passes_failed_rows_through(micro_encoder, photos):
    stage = ClipEmbedder.__new__(ClipEmbedder)
    stage.encoder, stage.keep_pixels = micro_encoder, False  # the constructor loads the same model
    pixels = np.empty(4, dtype=object)
    pixels[:] = [photos[0:1], photos[:0], photos[2:3], photos[3:6]]  # the last is a 3-frame video
    batch = {
        "item_id": np.array(["a", "b", "c", "v"], dtype=object),
        "status": np.array([OK, ERROR, OK, OK], dtype=object),
        "error": np.array([None, "corrupt", np.nan, None], dtype=object),  # nulls arrive as None or NaN
        "title": np.array(["blue mug", "broken", np.nan, "unboxing"], dtype=object),
        "pixels": pixels,
    }
    out = stage(batch)
    assert "pixels" not in out
    assert list(out["status"]) == [OK, ERROR, OK, OK] and list(out["error"]) == [None, "corrupt", None, None]
    np.testing.assert_allclose(out["vector"][[0, 2]], micro_encoder.encode_images(photos[[0, 2]]), atol=1e-6)
    assert not out["vector"][1].any() and out["frame_vectors"][1].shape == (0, micro_encoder.dim)
    frame_vectors = micro_encoder.encode_images(photos[3:6])
    np.testing.assert_allclose(out["frame_vectors"][3], frame_vectors, atol=1e-6)
    mean = frame_vectors.mean(axis=0)
    np.testing.assert_allclose(out["vector"][3], mean / np.linalg.norm(mean), atol=1e-6)
    np.testing.assert_allclose(out["text_vector"][0], micro_encoder.encode_texts(["blue mug"])[0], atol=1e-6)
    assert not out["text_vector"][1].any() and not out["text_vector"][2].any()
    assert set(out["model"]) == {micro_encoder.provenance}


def test_embed_stage_constructor_loads_the_model():
    stage = ClipEmbedder(MICRO, num_threads=1)
    assert stage.encoder.provenance == "open_clip/shoplens-micro/random-seed0"


def test_a_device_the_host_cannot_run_is_a_usage_error():
    import torch

    from shoplens.encoders.clip import pick_device
    from shoplens.encoders.errors import UsageError

    with pytest.raises(UsageError, match="--device must be one of auto, cpu, cuda, not 'tpu'"):
        pick_device("tpu")
    assert pick_device("cpu") == "cpu"
    if torch.cuda.is_available():
        assert pick_device("cuda") == pick_device("auto") == "cuda"
    else:
        with pytest.raises(UsageError, match="torch sees no CUDA device"):
            pick_device("cuda")
        assert pick_device("auto") == "cpu"


def test_a_model_failure_retries_items_one_by_one_and_fails_only_the_item_it_fails_on(micro_encoder, photos, monkeypatch):
    """A device fault (out of memory, a CUDA error) in a batch call costs the batch nothing: the
    items are encoded one by one, and only one the model still fails on becomes a row error."""
    stage = ClipEmbedder.__new__(ClipEmbedder)
    stage.encoder, stage.keep_pixels = micro_encoder, False
    poison = photos[1]
    real_images, real_texts = micro_encoder.encode_images, micro_encoder.encode_texts

    def encode_images(pixels):
        if len(pixels) > 1 or (pixels == poison).all():
            raise RuntimeError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return real_images(pixels)

    def encode_texts(texts):
        if "poisoned title" in texts:
            raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED")  # a kernel's refusal: the device goes on
        return real_texts(texts)

    monkeypatch.setattr(micro_encoder, "encode_images", encode_images)
    monkeypatch.setattr(micro_encoder, "encode_texts", encode_texts)
    pixels = np.empty(4, dtype=object)
    pixels[:] = [photos[0:1], photos[1:2], photos[2:3], photos[3:4]]
    batch = {
        "item_id": np.array(["a", "b", "c", "d"], dtype=object),
        "status": np.array([OK] * 4, dtype=object),
        "error": np.array([None] * 4, dtype=object),
        "title": np.array(["blue mug", "red shoe", "green hat", "poisoned title"], dtype=object),
        "pixels": pixels,
    }
    out = stage(batch)
    assert list(out["status"]) == [OK, ERROR, OK, ERROR]
    assert out["error"][1].startswith("the model failed on this item: CUDA out of memory")
    assert out["error"][3].startswith("the model failed on this item: cuDNN error")
    for i in (0, 2):
        np.testing.assert_allclose(out["vector"][i], real_images(photos[i : i + 1])[0], atol=1e-6)
        np.testing.assert_allclose(out["text_vector"][i], real_texts([batch["title"][i]])[0], atol=1e-6)


def test_out_of_memory_is_retried_but_a_lost_gpu_stops_the_stage(micro_encoder, photos, monkeypatch):
    """An error after which the device no longer works (an illegal memory access poisons the
    CUDA context) is raised, not turned into an error on every row that follows; out of memory
    is retried smaller. The device here is a CUDA device that does not synchronise (none is
    present), as a lost one does not."""
    import torch

    from shoplens.encoders.device_faults import recoverable

    assert recoverable(RuntimeError("any"), "cpu")
    assert recoverable(torch.OutOfMemoryError("CUDA out of memory"), "cuda")
    assert recoverable(RuntimeError("CUDA error: an illegal memory access was encountered"), "cuda") == torch.cuda.is_available()

    stage, batch = stage_and_two_photos(micro_encoder, photos)
    alone = [micro_encoder.encode_images(photos[k : k + 1]) for k in (0, 1)]  # before the device is "cuda"
    monkeypatch.setattr(micro_encoder, "device", "cuda")

    def out_of_memory_in_pairs(frames):
        if len(frames) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return alone[0] if (frames == photos[0:1]).all() else alone[1]

    monkeypatch.setattr(micro_encoder, "encode_images", out_of_memory_in_pairs)
    out = stage(batch)
    assert list(out["status"]) == [OK, OK] and (out["vector"] == np.concatenate(alone)).all()

    def lost(frames):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(micro_encoder, "encode_images", lost)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="illegal memory access"):
            stage(batch)


def test_a_failure_every_item_meets_alone_too_is_raised_not_written_as_row_errors(micro_encoder, photos, monkeypatch):
    """A bug (a dtype mismatch, say) fails every item: the stage stops rather than report each one."""
    stage, batch = stage_and_two_photos(micro_encoder, photos)

    def mismatch(frames):
        raise RuntimeError("expected scalar type Float but found Half")

    monkeypatch.setattr(micro_encoder, "encode_images", mismatch)
    with pytest.raises(RuntimeError, match="expected scalar type Float"):
        stage(batch)


def stage_and_two_photos(encoder, photos) -> tuple[ClipEmbedder, dict]:
    """The embed stage on `encoder` (its constructor loads the same model) and a batch of two
    untitled photos."""
    stage = ClipEmbedder.__new__(ClipEmbedder)
    stage.encoder, stage.keep_pixels = encoder, False
    pixels = np.empty(2, dtype=object)
    pixels[:] = [photos[0:1], photos[1:2]]
    batch = {
        "item_id": np.array(["a", "b"], dtype=object),
        "status": np.array([OK] * 2, dtype=object),
        "error": np.array([None] * 2, dtype=object),
        "title": np.array([None] * 2, dtype=object),
        "pixels": pixels,
    }
    return stage, batch
