"""End-to-end image ingest throughput against the model-only encode rate, in the same run.

    python benchmarks/ingest_images.py [--images 4000] [--model ViT-B-32] [--device auto|cpu|cuda] [--no-pixel-models] [--no-ocr]

End to end: wall time of `pipelines.ingest.ingest` from the manifest to rows in LanceDB, Ray's
start-up included (and broken down: a local Ray starting, the model actor's imports, the model's
build, each alone; and the start-up of a small job that joins the Ray left running), on 1024-pixel JPEGs made from package-shipped photos. Model only: the model
stage (OpenCLIP on image and title, then the policy's safety signals) with the same thread
count on the same items, already decoded. The ratio is the share of the model stage's speed the
whole pipeline keeps. Decode stage: images/s of one decode task per CPU-second, with JPEGs left
to the embedding device (the GPU default) and decoded on the CPU, and how many cores it takes to
feed the model stage.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/synthetic.py

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg", "hubble_deep_field.jpg")


def make_catalog(folder: Path, count: int, side: int = 1024) -> Path:
    """`count` distinct side x side JPEGs (crops, flips and tints of real photos) and their manifest."""
    from benchmarks.synthetic import photo_variants

    lines = ["item_id,kind,title,image"]
    for n, (file, _) in enumerate(photo_variants(folder, count, list(PHOTOS), side)):
        lines.append(f"item-{n:05d},product,{title(n)},{file}")
    manifest = folder / "catalog.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def policy_without(folder: Path, pixel_models: bool, ocr: bool) -> Path:
    """The shipped policy without its pixel classifiers and/or without OCR, written to `folder`.
    On a CPU the two ONNX models cost about as much again as the embedding, and OCR several times
    it (benchmarks/ocr.py); on a GPU node they run on its CPU cores: a throughput figure with them
    measures them."""
    from shoplens.safety.policy import load_policy, policy_yaml

    shipped = load_policy()
    update, tag = {}, ""
    if pixel_models:
        update["pixel_models"], tag = {}, f"{tag}-no-pixel-models"
    if ocr:
        update["ocr"], tag = shipped.ocr.model_copy(update={"enabled": False}), f"{tag}-no-ocr"
    path = folder / f"policy{tag}.yaml"
    path.write_text(policy_yaml(shipped.model_copy(update={**update, "version": f"{shipped.version}{tag}"})))
    return path


def title(n: int) -> str:
    return f"product photo number {n}"


def catalog_rows(folder: Path, ids: range) -> dict[str, np.ndarray]:
    """The decode stage's input for items `ids` of `make_catalog`'s manifest."""
    rows = {
        "item_id": [f"item-{n:05d}" for n in ids],
        "kind": ["product"] * len(ids),
        "title": [title(n) for n in ids],
        "media_uri": [str(folder / f"{n:05d}.jpg") for n in ids],
        "status": ["ok"] * len(ids),
        "error": [None] * len(ids),
        "known_sha256": [None] * len(ids),
        "frames": [None] * len(ids),
    }
    return {k: np.array(v, dtype=object) for k, v in rows.items()}


def decode_stage_rates(folder: Path, count: int, image_size: int) -> tuple[float, float]:
    """Images/s of one decode task on one core, fingerprinting as ingest does: with JPEGs left to
    the embedding device (`--device-decode`, the GPU default: read, hash, check the header) and
    decoded on the CPU (the baseline: what a CPU-only node, or the GPU decoder's refusals, cost)."""
    from shoplens.encoders.decode import MediaDecoder

    rows = catalog_rows(folder, range(min(count, 500)))
    rates = []
    for defer in (True, False):
        decode = MediaDecoder(image_size, fingerprint=True, defer_jpegs=defer)
        decode(catalog_rows(folder, range(8)))  # warm-up: imports
        started = time.process_time()  # CPU time: a rate per core, whatever else runs
        decode(rows)
        rates.append(len(rows["item_id"]) / (time.process_time() - started))
    return rates[0], rates[1]


def model_only_rates(
    folder: Path, count: int, model: str, pretrained: str, device: str, threads: int, batch: int, policy: Path | None
) -> tuple[float, float, float]:
    """Items/s of the model stage alone on items already decoded (and fingerprinted), with the
    same batch size and threads: OpenCLIP on image and title, then the policy's safety signals
    (EmbedAndScore, what the pipeline's model actors run); of OpenCLIP alone on image and title;
    and of the image tower alone."""
    from shoplens.encoders.clip import ClipSpec
    from shoplens.encoders.decode import MediaDecoder
    from shoplens.safety.policy import load_policy
    from shoplens.safety.stage import EmbedAndScore

    count = min(count, 1000)  # a rate: the first thousand items measure it as well as all of them
    stage = EmbedAndScore(ClipSpec(model, pretrained, device), load_policy(policy), num_threads=threads)
    encoder = stage.embedder.encoder
    decode = MediaDecoder(encoder.image_size, fingerprint=True)
    batches = [decode(catalog_rows(folder, range(start, min(start + batch, count)))) for start in range(0, count, batch)]

    def image_tower(decoded):
        return encoder.encode_images(np.concatenate(decoded["pixels"]))

    def embedding(decoded):
        return image_tower(decoded), encoder.encode_texts(list(decoded["title"]))

    stage(batches[0])  # warm-up: first calls allocate and pick kernels
    timings = []
    for work in (stage, embedding, image_tower):
        started = time.perf_counter()
        for decoded in batches:
            work(decoded)  # results return on the host: synchronised
        timings.append(count / (time.perf_counter() - started))
    return timings[0], timings[1], timings[2]


START_UP_PARTS = {
    "ray_init": "import ray; ray.init(include_dashboard=False, log_to_driver=False)",
    "import_torch_open_clip": "import torch, open_clip",
    "build_model": "from shoplens.encoders.clip import ClipEncoder, ClipSpec; ClipEncoder(ClipSpec({model!r}, {pretrained!r}, 'cpu'))",
}


def start_up_parts(model: str, pretrained: str) -> dict[str, float]:
    """Seconds of each part of a small job's start-up, each alone in a fresh process on an idle
    machine: a local Ray starting, the model actor's imports, building the model (imports
    excluded). In the job they run on the same cores at once, and Ray Data's scheduling and the
    first model call come on top."""
    parts = {}
    for name, code in START_UP_PARTS.items():
        setup = "import torch, open_clip\n" if name == "build_model" else ""
        timed = f"{setup}import time\nstarted = time.perf_counter()\n{code.format(model=model, pretrained=pretrained)}\nprint(time.perf_counter() - started)"
        run = subprocess.run([sys.executable, "-c", timed], capture_output=True, text=True, check=True)
        parts[name] = round(float(run.stdout.strip().splitlines()[-1]), 2)
    return parts


def warm_ray_start_up(folder: Path, config) -> float:
    """Seconds until the first rows of a 64-item ingest reach the writer, joining the Ray the
    timed run left running (as a user who runs many small jobs keeps one)."""
    from shoplens.pipelines.ingest.job import ingest

    lines = (folder / "catalog.csv").read_text().splitlines()
    (folder / "small.csv").write_text("\n".join(lines[:65]) + "\n")
    started, first = time.perf_counter(), []
    ingest(
        config.model_copy(update={"manifest": str(folder / "small.csv"), "db": str(folder / "small-db")}),
        on_rows=lambda rows: first.append(time.perf_counter()),
    )
    return round(first[0] - started, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="random")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--policy", type=Path, default=None, help="safety policy [default: the shipped one]")
    parser.add_argument("--no-pixel-models", action="store_true", help="the shipped policy without its ONNX pixel classifiers")
    parser.add_argument("--no-ocr", action="store_true", help="the shipped policy without OCR (text in pictures)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from shoplens.encoders.weights import resolve_weights
    from shoplens.pipelines.ingest.job import IngestConfig, ingest
    from shoplens.pipelines.ingest.ray_adapter import plan_cluster

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"making {args.images} 1024-px JPEGs ...", file=sys.stderr)
        manifest = make_catalog(folder, args.images)
        if args.no_pixel_models or args.no_ocr:
            args.policy = policy_without(folder, args.no_pixel_models, args.no_ocr)

        config = IngestConfig(
            manifest=manifest, db=str(folder / "db"), model=args.model, pretrained=args.pretrained, device=args.device, policy=args.policy
        )
        outputs = []  # (seconds since the start, rows) for each batch the writer receives
        started = time.perf_counter()
        summary = ingest(config, on_rows=lambda rows: outputs.append((time.perf_counter() - started, rows)))
        assert summary.ok == args.images, summary
        end_to_end = args.images / summary.seconds
        first_out = outputs[0][0]
        steady = (args.images - outputs[0][1]) / (outputs[-1][0] - first_out)

        import ray

        warm_start_up = warm_ray_start_up(folder, config)
        from shoplens.safety.policy import load_policy

        pools = plan_cluster(args.device, ocr=load_policy(args.policy).ocr.enabled)  # the job's own plan
        ray.shutdown()  # free the cores the pipeline's actors held
        parts = start_up_parts(args.model, args.pretrained)
        device = "cuda" if pools.embed.num_gpus else "cpu"
        model_only, embed_only, image_tower = model_only_rates(
            folder, args.images, args.model, args.pretrained, device, pools.embed.threads, pools.embed.batch_size, args.policy
        )
        deferred_decode, cpu_decode = decode_stage_rates(folder, args.images, resolve_weights(args.model, args.pretrained).image_size)

    figures = {
        "benchmark": "ingest_images",
        "images": args.images,
        "model": summary.model,
        "device": device,
        "end_to_end_images_per_s": round(end_to_end, 2),
        "end_to_end_seconds": summary.seconds,
        "start_up_seconds": round(first_out, 2),
        "start_up_warm_ray_seconds": warm_start_up,
        "start_up_parts_seconds": parts,
        "steady_images_per_s": round(steady, 2),
        "model_only_images_per_s": round(model_only, 2),
        "embedding_only_images_per_s": round(embed_only, 2),
        "image_tower_only_images_per_s": round(image_tower, 2),
        "decode_per_core_device_jpegs_images_per_s": round(deferred_decode, 1),
        "decode_per_core_cpu_images_per_s": round(cpu_decode, 1),
        "decode_cores_to_feed_model": round(model_only / (deferred_decode if pools.embed.num_gpus else cpu_decode), 2),
        "ratio": round(end_to_end / model_only, 3),
        "steady_ratio": round(steady / model_only, 3),
    }
    print(f"end to end   : {end_to_end:8.2f} items/s ({args.images} items in {summary.seconds:.1f} s, start-up included)")
    print(f"  start-up   : {first_out:8.2f} s until the first rows reached the writer (Ray, actors, model)")
    print(f"  with Ray already running (a 64-item job joining it): {warm_start_up:.2f} s until its first rows")
    print(f"  its parts, each alone in a fresh process: {', '.join(f'{k} {v:.2f} s' for k, v in parts.items())}")
    print(f"  after it   : {steady:8.2f} items/s")
    print(
        f"model only   : {model_only:8.2f} items/s (embed image + title and score, {pools.embed.threads} threads, batch {pools.embed.batch_size})"
    )
    print(f"  embedding  : {embed_only:8.2f} items/s (image + title, no safety scoring)")
    print(f"  image tower: {image_tower:8.2f} images/s")
    print(
        f"decode stage : {deferred_decode:8.1f} images/s per core with JPEGs left to the embedding device (GPU default),"
        f" {cpu_decode:.1f} decoding on the CPU ({deferred_decode / cpu_decode:.1f}x);"
        f" {figures['decode_cores_to_feed_model']} cores feed the model stage here"
    )
    print(f"ratio        : {end_to_end / model_only:8.3f} end to end, {steady / model_only:.3f} after start-up")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
