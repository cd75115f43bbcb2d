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
