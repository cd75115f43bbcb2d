import re

import numpy as np
import pytest
from conftest import SHOTS, mjpeg_stream, sample_video, shots_video, write_video

from shoplens.encoders.decode import MediaDecoder
from shoplens.encoders.media import MediaError
from shoplens.encoders.rows import ERROR, OK, SKIPPED
from shoplens.encoders.video import FrameSampling, VideoLimits, sample_frames

SIZE = 64


@pytest.mark.parametrize(
    "text, expected",
    [("uniform:8", ("uniform", 8)), ("fps:1", ("fps", 1)), ("fps:0.5", ("fps", 0.5)), ("scene", ("scene", 0)), (" Scene ", ("scene", 0))],
)
def test_sampling_specs(text, expected):
    sampling = FrameSampling.parse(text)
    assert (sampling.strategy, sampling.value) == expected
    assert FrameSampling.parse(str(sampling)) == sampling


@pytest.mark.parametrize("text", ["uniform", "uniform:0", "uniform:1000", "fps:0", "fps:-1", "every:2", "", None])
def test_bad_sampling_specs(text):
    with pytest.raises(ValueError):
        FrameSampling.parse(text)


def test_uniform_on_the_real_720p_clip():
    frames = sample_frames(str(sample_video()), FrameSampling.parse("uniform:8"), SIZE)
    assert frames.pixels.shape == (8, SIZE, SIZE, 3) and frames.pixels.dtype == np.uint8
    assert frames.frame_index[0] == 0 and frames.frame_index[-1] == 131  # first and last of 132
    assert (np.diff(frames.timestamp_s) > 0).all()
    assert 0 <= frames.timestamp_s.min() and frames.timestamp_s.max() <= 132 / 25
    assert frames.notes == []
    assert frames.pixels.std() > 10  # real content, not blank frames


def test_frames_are_rgb_not_bgr(tmp_path):
    frames = sample_frames(str(write_video(tmp_path / "red.avi", [(0, 0, 255)] * 5)), FrameSampling.parse("uniform:2"), SIZE)
    red, green, blue = frames.pixels[0].reshape(-1, 3).mean(axis=0)
    assert red > 200 and green < 40 and blue < 40


def test_uniform_on_a_short_clip_gives_fewer_frames_with_a_note(tmp_path):
    path = write_video(tmp_path / "short.avi", [(i * 40, 0, 0) for i in range(5)])
    frames = sample_frames(str(path), FrameSampling.parse("uniform:8"), SIZE)
    assert list(frames.frame_index) == [0, 1, 2, 3, 4]
    assert frames.notes == ["5 frames instead of the 8 asked: the clip is that short"]


def test_fps_sampling():
    frames = sample_frames(str(sample_video("bikes.mp4")), FrameSampling.parse("fps:1"), SIZE)
    np.testing.assert_allclose(frames.timestamp_s, np.arange(10), atol=1e-6)  # a 10 s clip
    frames = sample_frames(str(sample_video("bikes.mp4")), FrameSampling.parse("fps:25"), SIZE)
    assert len(frames.frame_index) == FrameSampling.max_frames and "capped at 32 frames" in frames.notes


def test_fps_above_the_clips_own_rate_takes_each_frame_once():
    frames = sample_frames(str(sample_video("bikes.mp4")), FrameSampling.parse("fps:30"), SIZE)
    assert list(frames.frame_index) == list(range(32))  # 25 fps: every frame, once, up to the cap
    assert "the clip has only 25 frames a second: took each once" in frames.notes


def test_a_stream_without_frame_count_or_index(tmp_path):
    levels = [i * 4 for i in range(60)]
    path = mjpeg_stream(tmp_path / "raw.mjpeg", levels)
    frames = sample_frames(str(path), FrameSampling.parse("uniform:8"), 32)
    assert list(frames.frame_index) == [0, 8, 17, 25, 34, 42, 51, 59]  # spread over the 60 frames counted
    np.testing.assert_allclose(frames.timestamp_s, frames.frame_index / 25)
    # The pixels are the frames the indices name (each frame's grey level is 4 x its index).
    np.testing.assert_allclose([p.mean() for p in frames.pixels], [levels[i] for i in frames.frame_index], atol=3)
    seeking = sample_frames(str(path), FrameSampling("uniform", 3, seek_gap_frames=5), 32)
    np.testing.assert_allclose([p.mean() for p in seeking.pixels], [levels[i] for i in seeking.frame_index], atol=3)


def test_scene_finds_the_cuts_of_a_generated_video(tmp_path):
    frames = sample_frames(str(shots_video(tmp_path / "shots.avi")), FrameSampling.parse("scene"), SIZE)
    starts = [start for start, _ in SHOTS]
    assert len(frames.frame_index) == len(starts)
    # Checked 10 times a second (every 2-3 frames at 25 fps): each cut is found within a check.
    assert all(0 <= found - start < 3 for found, start in zip(frames.frame_index, starts)), frames.frame_index
    for pixels, (_, bgr) in zip(frames.pixels, SHOTS):
        np.testing.assert_allclose(pixels.reshape(-1, 3).mean(axis=0), bgr[::-1], atol=8)


def test_sampling_seeks_across_long_gaps():
    sampling = FrameSampling("uniform", 3, seek_gap_frames=10)
    seeking = sample_frames(str(sample_video("bikes.mp4")), sampling, SIZE)
    walking = sample_frames(str(sample_video("bikes.mp4")), FrameSampling.parse("uniform:3"), SIZE)
    np.testing.assert_array_equal(seeking.frame_index, walking.frame_index)
    assert np.abs(seeking.pixels.astype(int) - walking.pixels.astype(int)).mean() < 2


def test_truncated_video_keeps_the_frames_before_the_cut(tmp_path):
    whole = write_video(tmp_path / "whole.avi", [(i * 4, 100, 100) for i in range(60)]).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole[: len(whole) // 2])
    frames = sample_frames(str(cut), FrameSampling.parse("fps:25"), SIZE)
    assert 10 < len(frames.frame_index) < 32 and list(frames.frame_index) == list(range(len(frames.frame_index)))
    assert any("video ends after" in note and "of the 60 frames its header claims" in note for note in frames.notes)


def test_long_video_is_capped_with_a_note():
    sampling = FrameSampling("fps", 1, max_duration_s=4)
    frames = sample_frames(str(sample_video("bikes.mp4")), sampling, SIZE)
    assert list(frames.timestamp_s) == [0, 1, 2, 3]
    assert "video is longer than 4 s: sampled its first 4 s" in frames.notes


def test_large_frames_are_refused():
    with pytest.raises(MediaError, match="video frames are 1280x720, over the 0 MP limit"):
        sample_frames(str(sample_video()), FrameSampling.parse("uniform:2"), SIZE, VideoLimits(max_pixels_per_frame=100_000))


def hls_playlist(segment) -> bytes:
    return f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\nfile://{segment}\n#EXT-X-ENDLIST\n".encode()


def test_ffmpeg_opens_no_playlist_even_past_the_content_check(tmp_path, monkeypatch):
    """The second door: FFmpeg itself is held to the known containers' demuxers and to files."""
    import cv2

    from shoplens.encoders.video import FFMPEG_OPTIONS

    playlist = tmp_path / "list.m3u8"
    playlist.write_bytes(hls_playlist(sample_video()))
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", FFMPEG_OPTIONS)
    assert not cv2.VideoCapture(str(playlist), cv2.CAP_FFMPEG).isOpened()
    assert cv2.VideoCapture(str(sample_video()), cv2.CAP_FFMPEG).isOpened()


def bad_videos(tmp_path) -> dict[str, tuple[bytes, str]]:
    real = sample_video().read_bytes()
    codec = real.rfind(b"avc1")  # the sample entry naming the codec
    return {
        "empty.mp4": (b"", "empty file (0 bytes)"),
        "random.mp4": (np.random.default_rng(0).bytes(20_000), "not a video container shoplens reads"),
        # Playlists make FFmpeg open the files they name, wherever those are: refused by content, whatever the name.
        "playlist.m3u8": (hls_playlist(sample_video()), "playlists and other files that name further media are refused"),
        "playlist.mp4": (hls_playlist(sample_video()), "the file starts with b'#EXTM3U"),
        "concat.mp4": (f"ffconcat version 1.0\nfile '{sample_video()}'\n".encode(), "not a video container"),
        "unknown-codec.mp4": (real[:codec] + b"zzzz" + real[codec + 4 :], "not a video OpenCV can open"),
        "cut-index.mp4": (real[: len(real) // 2], "not a video OpenCV can open"),  # MP4 index is at the end
        "no-frames.avi": (write_video(tmp_path / "none.avi", []).read_bytes(), "the video yielded no decodable frame"),
    }


def test_bad_videos_are_readable_errors(tmp_path):
    for name, (data, message) in bad_videos(tmp_path).items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(MediaError, match=re.escape(message)):
            sample_frames(str(path), FrameSampling.parse("uniform:8"), SIZE)


def test_decode_stage_mixes_products_and_videos(tmp_path):
    from conftest import photo_bytes

    image = tmp_path / "a.jpg"
    image.write_bytes(photo_bytes())
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    batch = {
        "item_id": np.array(["p", "v", "bad", "again"], dtype=object),
        "kind": np.array(["product", "video", "live", "video"], dtype=object),
        "media_uri": np.array([str(image), str(sample_video()), str(broken), str(sample_video())], dtype=object),
        "frames": np.array([None, "uniform:4", "uniform:4", "uniform:4"], dtype=object),
        "status": np.array([OK] * 4, dtype=object),
        "error": np.array([None] * 4, dtype=object),
        "known_sha256": np.array([None, None, None, __import__("hashlib").sha256(sample_video().read_bytes()).hexdigest()], dtype=object),
    }
    out = MediaDecoder(SIZE)(batch)
    assert list(out["status"]) == [OK, OK, ERROR, SKIPPED]
    assert out["pixels"][0].shape == (1, SIZE, SIZE, 3) and out["pixels"][1].shape == (4, SIZE, SIZE, 3)
    assert out["pixels"][2].shape == (0, SIZE, SIZE, 3)
    assert list(out["frame_index"][1]) == [0, 44, 87, 131]
    assert out["media_sha256"][1] == out["media_sha256"][3]
