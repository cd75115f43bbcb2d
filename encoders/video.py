"""Frame sampling from videos with OpenCV: which frames, decoded as little as possible.

One sequential pass: `grab()` demuxes and decodes every frame (cheap), `retrieve()` converts only
the frames wanted, and a long gap between wanted frames is crossed with a seek instead. The
container's frame count is only a hint for planning: reads are counted, and the duration and the
number of frames read are capped.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

import numpy as np

from shoplens.encoders.media import MediaError

DEFAULT_SAMPLING = "uniform:8"
# The FFmpeg inside OpenCV follows playlists (HLS, concat, ...) to any file or URL they name: only
# self-contained containers are opened, recognised by their first bytes, and FFmpeg may use no
# other demuxer and no protocol but the one file.
CONTAINERS = {
    "MP4/MOV": lambda head: head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"),
    "Matroska/WebM": lambda head: head.startswith(b"\x1a\x45\xdf\xa3"),
    "AVI": lambda head: head.startswith(b"RIFF") and head[8:12] == b"AVI ",
    "MPEG-TS": lambda head: head[:1] == b"\x47" and (len(head) <= 188 or head[188:189] == b"\x47"),
    "MPEG-PS": lambda head: head.startswith(b"\x00\x00\x01\xba"),
    "FLV": lambda head: head.startswith(b"FLV\x01"),
    "Ogg": lambda head: head.startswith(b"OggS"),
    "ASF/WMV": lambda head: head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"),
    "MJPEG": lambda head: head.startswith(b"\xff\xd8\xff"),
}
FFMPEG_OPTIONS = "protocol_whitelist;file|format_whitelist;mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,mpeg,flv,ogg,asf,mjpeg"
HEAD_BYTES = 376  # two MPEG-TS packets
_SPEC = re.compile(r"^(uniform):(\d+)$|^(fps):(\d+(?:\.\d+)?)$|^(scene)$")


@dataclass(frozen=True)
class FrameSampling:
    """`uniform:N` (N frames spread over the clip), `fps:R` (R a second) or `scene` (one a shot)."""

    strategy: str
    value: float = 0.0
    max_frames: int = 32
    max_duration_s: float = 900.0
    seek_gap_frames: int = 250  # wanted frames further apart than this are reached by seeking
    scene_threshold: float = 30.0  # mean absolute grey-level change (0-255) that marks a cut
    scene_checks_per_s: float = 10.0  # how often scene detection compares frames

    @classmethod
    def parse(cls, text: str) -> FrameSampling:
        match = _SPEC.match(text.strip().lower()) if isinstance(text, str) else None
        if not match:
            raise ValueError(f"frame sampling must be uniform:N, fps:R or scene, not {text!r}")
        if match.group(1):
            count = int(match.group(2))
            if not 1 <= count <= cls.max_frames:
                raise ValueError(f"uniform:N needs 1 <= N <= {cls.max_frames}, not {count}")
            return cls("uniform", count)
        if match.group(3):
            rate = float(match.group(4))
            if rate <= 0:
                raise ValueError(f"fps:R needs R > 0, not {rate}")
            return cls("fps", rate)
        return cls("scene")

    def __str__(self) -> str:
        if self.strategy == "uniform":
            return f"uniform:{int(self.value)}"
        return f"fps:{self.value:g}" if self.strategy == "fps" else "scene"


@dataclass
class SampledFrames:
    pixels: np.ndarray  # uint8 [F, size, size, 3] RGB
    frame_index: np.ndarray  # int64 [F], position in the stream
    timestamp_s: np.ndarray  # float32 [F]
    notes: list[str] = field(default_factory=list)  # what was capped or cut short
    pdq: list[str | None] = field(default_factory=list)  # per frame, when fingerprinted (encoders.phash)
    pdq_quality: list[int | None] = field(default_factory=list)
    whole: np.ndarray | None = None  # uint8 [F, H, W, 3]: each whole frame fitted within `read_side` (for OCR)


@dataclass(frozen=True)
class VideoLimits:
    max_pixels_per_frame: int = 7680 * 4320  # 8K


def sample_frames(
    path: str, sampling: FrameSampling, size: int, limits: VideoLimits = VideoLimits(), fingerprint: bool = False, read_side: int = 0
) -> SampledFrames:
    """Samples frames from a local video file, each resized (shortest side) and centre-cropped
    to `size`, RGB, with `fingerprint` PDQ-hashed whole, and with `read_side` also kept whole,
    fitted within `read_side` pixels. Raises MediaError when the file
    yields no frame at all."""
    import cv2

    if os.path.getsize(path) == 0:
        raise MediaError("empty file (0 bytes)")
    capture = open_capture(path)
    try:
        if not capture.isOpened():
            raise MediaError("not a video OpenCV can open (unknown container or codec)")
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width * height > limits.max_pixels_per_frame:
            raise MediaError(f"video frames are {width}x{height}, over the {limits.max_pixels_per_frame / 1e6:.0f} MP limit")
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = fps if math.isfinite(fps) and 1 <= fps <= 1000 else None
        claimed = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        claimed = claimed if claimed > 0 else None
        max_read = int(sampling.max_duration_s * (fps or 25.0))
        reader = _Reader(capture, fps or 25.0, max_frames_read=max_read, seekable=claimed is not None, size=size, fingerprint=fingerprint)
        reader.read_side = read_side  # >0: each frame is also kept whole, fitted within this many pixels
        reader.capped = claimed is not None and claimed > reader.max_frames_read
        if sampling.strategy == "scene":
            picked = _scene_frames(reader, sampling)
        else:
            # Spreading frames needs the length: a container that does not state it is counted.
            length = claimed or (_count_frames(path, reader.max_frames_read) if sampling.strategy == "uniform" else None)
            picked = _planned_frames(reader, _plan(sampling, fps or 25.0, length, reader.max_frames_read), sampling)
    finally:
        capture.release()
    notes = _notes(sampling, reader, claimed, fps, len(picked))
    if not picked:
        detail = f"; {notes[0]}" if notes else ""
        raise MediaError(f"the video yielded no decodable frame{detail}")
    indices, timestamps, pixels, hashes, qualities, whole = zip(*picked)
    return SampledFrames(
        np.stack(pixels),
        np.array(indices, np.int64),
        np.array(timestamps, np.float32),
        notes,
        list(hashes),
        list(qualities),
        np.stack(whole) if read_side else None,
    )


class _Reader:
    """Walks a capture forward, counting successful reads; knows where it is."""

    def __init__(self, capture, fps: float, max_frames_read: int, seekable: bool, size: int, fingerprint: bool):
        self.capture, self.fps, self.max_frames_read = capture, fps, max_frames_read
        self.size, self.fingerprint = size, fingerprint
        self.seekable = seekable  # a stream without a frame count has no index to seek by
        self.position = 0  # index of the next frame grab() returns
        self.ended = False  # the stream stopped before we did
        self.capped = False  # we stopped at max_frames_read
        self.read_side = 0

    def advance_to(self, index: int, seek_gap: int) -> bool:
        """Grabs frame `index` (seeking across long gaps); False when the stream has no such frame."""
        import cv2

        if index >= self.max_frames_read:
            self.capped = True
            return False
        if self.seekable and index - self.position > seek_gap:
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            # Trust where the capture says it is, not where it was asked to go: some containers
            # cannot seek and stay put.
            self.position = int(self.capture.get(cv2.CAP_PROP_POS_FRAMES))
        if self.position > index:
            return False
        while self.position <= index:
            if not self.capture.grab():
                self.ended = True
                return False
            self.position += 1
        return True

    def retrieve(self) -> np.ndarray | None:
        ok, frame = self.capture.retrieve()
        return frame if ok and frame is not None else None

    def take(self, index: int, frame_bgr: np.ndarray) -> tuple:
        """(index, timestamp, model pixels, PDQ hash, its quality, the whole frame or None) of a retrieved frame."""
        import cv2

        from shoplens.encoders.phash import pdq_hash

        pixels = to_model_pixels(frame_bgr, self.size)
        fingerprint = pdq_hash(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)) if self.fingerprint else (None, None)
        return (index, index / self.fps, pixels, *fingerprint, fit_frame(frame_bgr, self.read_side) if self.read_side else None)


def container(path: str) -> str:
    """The container a video file's first bytes say it is; MediaError for anything else
    (playlists, text, images, unknown formats)."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    found = next((name for name, matches in CONTAINERS.items() if matches(head)), None)
    if found is None:
        raise MediaError(
            f"not a video container shoplens reads ({', '.join(CONTAINERS)}): the file starts with {head[:16]!r}; "
            "playlists and other files that name further media are refused"
        )
    return found


def open_capture(path: str):
    """An OpenCV capture of a local video file whose content is a known container, through FFmpeg
    restricted to that file and the known containers' demuxers."""
    import cv2

    container(path)
    if os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS") != FFMPEG_OPTIONS:  # read by OpenCV at each open
        os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = FFMPEG_OPTIONS
    return cv2.VideoCapture(path, cv2.CAP_FFMPEG)


def _count_frames(path: str, max_read: int) -> int:
    capture = open_capture(path)
    count = 0
    while count < max_read and capture.grab():
        count += 1
    capture.release()
    return max(count, 1)


def _plan(sampling: FrameSampling, fps: float, length: int | None, max_read: int) -> list[int]:
    """Frame indices to take for uniform and fps sampling (the stream may end before them).
    Distinct and increasing: asking for more frames a second than the clip has gives each once."""
    length = min(length or max_read, max_read)
    if sampling.strategy == "uniform":
        return sorted({round(i) for i in np.linspace(0, length - 1, int(sampling.value))})
    step = fps / sampling.value
    return sorted({round(k * step) for k in range(math.ceil(length / step))})[: sampling.max_frames]


def _planned_frames(reader: _Reader, wanted: list[int], sampling: FrameSampling) -> list[tuple]:
    picked = []
    for index in wanted:
        if not reader.advance_to(index, seek_gap=sampling.seek_gap_frames):
            if reader.ended or reader.capped:
                break
            continue  # a seek overshot this frame
        frame = reader.retrieve()
        if frame is not None:
            picked.append(reader.take(index, frame))
    return picked


def _scene_frames(reader: _Reader, sampling: FrameSampling) -> list[tuple]:
    """The first frame of every shot: a cut is a large change between two checked frames."""
    import cv2

    every = max(1, round(reader.fps / sampling.scene_checks_per_s))
    picked, previous, index = [], None, 0
    while len(picked) < sampling.max_frames and reader.advance_to(index, seek_gap=every):
        frame = reader.retrieve()
        if frame is not None:
            thumbnail = cv2.cvtColor(cv2.resize(frame, (64, 36), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
            change = None if previous is None else float(np.abs(thumbnail.astype(np.int16) - previous).mean())
            if change is None or change > sampling.scene_threshold:
                picked.append(reader.take(index, frame))
            previous = thumbnail.astype(np.int16)
        index += every
    return picked


def _notes(sampling: FrameSampling, reader: _Reader, claimed: int | None, fps: float | None, picked: int) -> list[str]:
    notes = []
    if reader.ended and claimed and reader.position < claimed - 1:
        notes.append(f"video ends after {reader.position} of the {claimed} frames its header claims (truncated?)")
    if reader.capped:
        notes.append(f"video is longer than {sampling.max_duration_s:g} s: sampled its first {sampling.max_duration_s:g} s")
    if sampling.strategy == "uniform" and picked < sampling.value and picked:
        notes.append(f"{picked} frames instead of the {int(sampling.value)} asked: the clip is that short")
    if sampling.strategy != "uniform" and picked >= sampling.max_frames:
        notes.append(f"capped at {sampling.max_frames} frames")
    if sampling.strategy == "fps" and fps is not None and sampling.value > fps:
        notes.append(f"the clip has only {fps:g} frames a second: took each once")
    if fps is None:
        notes.append("the video states no frame rate: timestamps assume 25 fps")
    return notes


def to_model_pixels(frame_bgr: np.ndarray, size: int) -> np.ndarray:
    """An OpenCV frame to uint8 [size, size, 3] RGB: shortest side to `size`, centre crop.
    Resized first, so the colour conversion touches only the small image."""
    import cv2

    height, width = frame_bgr.shape[:2]
    scale = size / min(width, height)
    resized = cv2.resize(
        frame_bgr,
        (max(size, round(width * scale)), max(size, round(height * scale))),
        interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC,
    )
    top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
    return cv2.cvtColor(resized[top : top + size, left : left + size], cv2.COLOR_BGR2RGB)


def fit_frame(frame_bgr: np.ndarray, side: int) -> np.ndarray:
    """An OpenCV frame to uint8 [H, W, 3] RGB, scaled down (never up) to at most `side` on its long side."""
    import cv2

    height, width = frame_bgr.shape[:2]
    scale = min(1.0, side / max(width, height))
    if scale < 1.0:
        frame_bgr = cv2.resize(frame_bgr, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)


def frame_at(path: str, timestamp_s: float) -> np.ndarray:
    """The frame shown at `timestamp_s`, uint8 [H, W, 3] RGB (review evidence). Raises MediaError."""
    import cv2

    capture = open_capture(path)
    try:
        if not capture.isOpened():
            raise MediaError("not a video OpenCV can open (unknown container or codec)")
        capture.set(cv2.CAP_PROP_POS_MSEC, max(0.0, float(timestamp_s)) * 1000.0)
        ok, frame = capture.read()
    finally:
        capture.release()
    if not ok or frame is None:
        raise MediaError(f"no frame at {timestamp_s:.2f} s")
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
