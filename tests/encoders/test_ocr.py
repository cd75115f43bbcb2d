"""OCR with the models inside rapidocr's wheel, on generated pictures of known text."""

import socket

import numpy as np
import pytest

from shoplens.encoders.ocr import TextReader


def picture(lines: list[tuple[str, tuple[int, int]]], size=(300, 640), scale: float = 1.2) -> np.ndarray:
    import cv2

    image = np.full((*size, 3), 255, np.uint8)
    for text, origin in lines:
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (20, 20, 20), 3)
    return image


@pytest.fixture(scope="module")
def reader() -> TextReader:
    return TextReader(num_threads=1)


def test_lines_come_in_reading_order_with_confidence_and_box(reader):
    image = picture([("RIGHT SIDE", (360, 80)), ("LEFT SIDE", (20, 80)), ("Genuine leather bag", (20, 200))])
    lines = reader(image)
    assert [line.text for line in lines] == ["LEFT SIDE", "RIGHT SIDE", "Genuine leather bag"]
    assert all(line.confidence >= 0.9 for line in lines)
    (left, top), *_, (_, bottom) = lines[2].box
    assert 10 <= left <= 30 and 150 <= top < 200 < bottom <= 230  # where it was drawn, in the picture's pixels


def test_boxes_are_in_the_pictures_pixels_when_it_is_scaled_down_to_read(reader):
    image = picture([("CALL 555 0199", (1800, 2400))], size=(3000, 4000), scale=4.0)
    (line,) = reader(image)
    assert line.text.replace(" ", "") == "CALL5550199"
    xs, ys = zip(*line.box)
    assert 1750 <= min(xs) and max(xs) <= 3000 and 2250 <= min(ys) and max(ys) <= 2450


@pytest.mark.parametrize("shape", [(20, 2000), (60, 4000), (2000, 20)])
def test_banners_far_thinner_than_wide_are_read_not_refused(reader, shape):
    import cv2

    image = np.full((*shape, 3), 255, np.uint8)
    if shape[1] > shape[0]:
        cv2.putText(image, "SALE", (10, shape[0] - 4), cv2.FONT_HERSHEY_SIMPLEX, shape[0] / 40, (0, 0, 0), 2)
    lines = reader(image)  # padded to be read: boxes may reach into the padding below
    if shape[1] > shape[0]:
        assert [line.text for line in lines] == ["SALE"] and max(x for x, _ in lines[0].box) < 200
    else:
        assert lines == []


def test_an_upside_down_line_is_read_the_right_way_up(reader):
    image = picture([("Genuine leather bag", (20, 150))])[::-1, ::-1]
    assert [line.text for line in reader(np.ascontiguousarray(image))] == ["Genuine leather bag"]


def test_pictures_without_text_have_no_lines(reader):
    from skimage import data

    assert reader(np.full((224, 224, 3), 200, np.uint8)) == []
    assert reader(data.astronaut()) == []  # (on `data.coffee()` it reads the cup as an "8" at 0.89)


def test_the_bundled_models_are_used_with_the_network_blocked(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network access blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    lines = TextReader(num_threads=1)(picture([("offline", (20, 150))]))
    assert [line.text for line in lines] == ["offline"]


@pytest.mark.parametrize(
    "bad",
    [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3), np.float32), np.zeros((0, 10, 3), np.uint8)],
)
def test_pictures_it_cannot_take_are_refused(reader, bad):
    with pytest.raises(ValueError, match="expected a uint8 RGB picture"):
        reader(bad)


def test_settings_out_of_range_are_refused():
    with pytest.raises(ValueError, match="max_side"):
        TextReader(max_side=8)
    with pytest.raises(ValueError, match="min_confidence"):
        TextReader(min_confidence=1.5)


def stage_batch(rows: list) -> dict:
    """A decoded batch as the OCR stage gets it: per row its `whole` pictures (or None) and hashes."""
    from shoplens.encoders.phash import pdq_hash

    n = len(rows)
    out = {"status": np.array(["ok"] * n, dtype=object), "whole": np.empty(n, dtype=object), "pdq": np.empty(n, dtype=object)}
    for i, pictures in enumerate(rows):
        out["whole"][i] = None if pictures is None else np.stack(pictures)
        out["pdq"][i] = [] if pictures is None else [pdq_hash(p)[0] for p in pictures]
    return out


def test_the_stage_reads_each_frame_once_a_repeat_is_not_read_again_and_boxes_are_fractions():
    from shoplens.encoders.ocr import ReadText, ocr_provenance

    stage = ReadText(max_side=640, repeat_distance=10, num_threads=1)
    calls = []
    read = stage.reader
    stage.reader = lambda rgb: calls.append(rgb.shape) or read(rgb)  # counts real reads
    sale, phone = picture([("BIG SALE", (40, 150))]), picture([("CALL 415 555 2671", (20, 150))])
    out = stage(stage_batch([[sale, sale.copy(), phone], None]))
    assert set(out) == {"status", "pdq", "frame_ocr_lines", "ocr_error", "ocr_model"}  # `whole` dropped
    frames = out["frame_ocr_lines"][0]
    assert [[line["text"] for line in lines] for lines in frames] == [["BIG SALE"], ["BIG SALE"], ["CALL 415 555 2671"]]
    assert len(calls) == 2  # the repeated frame was not read again
    box = np.array(frames[0][0]["box"]).reshape(4, 2)
    assert ((0 <= box) & (box <= 1)).all() and box[:, 0].min() < 40 / 640 + 0.02 and 150 / 300 - 0.2 < box[:, 1].max() < 0.6
    assert out["frame_ocr_lines"][1] is None and out["ocr_model"][1] is None  # nothing to read: not read
    assert out["ocr_model"][0] == ocr_provenance(640, 0.5, 10) and list(out["ocr_error"]) == [None, None]


def test_a_picture_ocr_cannot_take_is_that_rows_error_and_the_batch_goes_on():
    from shoplens.encoders.ocr import ReadText

    batch = stage_batch([[picture([("BIG SALE", (40, 150))])], [picture([("BIG SALE", (40, 150))])]])
    batch["whole"][0] = np.zeros((1, 10, 10), np.float32)  # not a uint8 RGB picture
    out = ReadText(num_threads=1)(batch)
    assert out["ocr_error"][0].startswith("OCR failed: ValueError") and out["ocr_model"][0] is None
    assert out["ocr_error"][1] is None and out["frame_ocr_lines"][1][0][0]["text"] == "BIG SALE"


@pytest.mark.parametrize("shape", [(1, 1, 3), (5, 400, 3), (64, 64, 3)], ids=["one-pixel", "thin", "flat"])
def test_pictures_too_small_or_flat_to_read_have_no_text_and_no_error(shape):
    from shoplens.encoders.ocr import ReadText

    out = ReadText(num_threads=1)(stage_batch([[np.full(shape, 200, np.uint8)]]))
    assert out["frame_ocr_lines"][0] == [[]] and out["ocr_error"][0] is None


def test_rows_without_pictures_are_not_read_even_as_ray_hands_them_over():
    """A batch none of whose rows has pictures to read: Ray makes the column a float one (NaN)."""
    from shoplens.encoders.ocr import ReadText

    batch = stage_batch([None, None])
    batch["whole"] = np.full(2, np.nan, np.float32)
    out = ReadText(num_threads=1)(batch)
    assert list(out["ocr_error"]) == [None, None] and list(out["frame_ocr_lines"]) == [None, None]


def test_a_line_of_text_added_to_the_next_frame_is_read_though_pdq_barely_moves():
    """A 1920 x 1080 frame, then the same with a contact line added, both fitted within 640 px:
    their PDQ hashes lie within a generous repeat distance, their pixels do not."""
    import cv2

    from shoplens.encoders.ocr import ReadText
    from shoplens.encoders.phash import hamming, hash_bytes, pdq_hash
    from shoplens.encoders.video import fit_frame

    first = np.full((1080, 1920, 3), 235, np.uint8)
    cv2.putText(first, "SUMMER SALE", (200, 400), cv2.FONT_HERSHEY_SIMPLEX, 6, (20, 20, 20), 12)
    second = first.copy()
    cv2.putText(second, "dm me on telegram @deals88", (200, 900), cv2.FONT_HERSHEY_SIMPLEX, 1.6, (20, 20, 20), 3)
    frames = [fit_frame(cv2.cvtColor(f, cv2.COLOR_RGB2BGR), 640) for f in (first, first.copy(), second)]
    hashes = [pdq_hash(f)[0] for f in frames]
    assert hamming(hash_bytes(hashes[1:2]), hash_bytes(hashes[2:3]))[0, 0] <= 64  # PDQ alone would call it a repeat
    stage = ReadText(max_side=640, repeat_distance=64, num_threads=1)
    calls = []
    read = stage.reader
    stage.reader = lambda rgb: calls.append(1) or read(rgb)
    lines = stage({"status": np.array(["ok"], dtype=object), "whole": [np.stack(frames)], "pdq": [hashes]})["frame_ocr_lines"][0]
    assert len(calls) == 2  # the true repeat was not read again; the changed frame was
    assert any("telegram" in line["text"].lower() for line in lines[2])


@pytest.mark.parametrize("ink", [(120, 120, 120), (40, 90, 200)], ids=["faint", "same-brightness-other-colour"])
def test_small_faint_text_added_to_a_textured_frame_makes_it_another_picture(ink):
    import cv2
    from conftest import sample_photo
    from PIL import Image

    from shoplens.encoders.ocr import _unchanged

    frame = np.array(Image.open(sample_photo("chelsea.png")).convert("RGB").resize((640, 360)))
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    frame[300:330, 20:300] = np.array(ink, np.uint8)  # a band the text is written on, of one colour
    written = frame.copy()
    cv2.putText(written, "WA +44 7700 900123", (24, 322), cv2.FONT_HERSHEY_SIMPLEX, 0.45, tuple(int(c) + 50 for c in ink), 1)
    assert grey.std() > 20  # a textured picture
    assert not _unchanged(frame, written)
    noisy = np.clip(frame.astype(np.int16) + np.random.default_rng(0).integers(-6, 7, frame.shape), 0, 255).astype(np.uint8)
    assert _unchanged(frame, noisy)  # compression-like noise is the same picture
