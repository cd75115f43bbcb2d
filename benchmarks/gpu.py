"""Everything the GPU path does, measured in one run on a fresh GPU host (at most eight minutes).

    python benchmarks/gpu.py [--out gpu-figures.json] [--install-seconds S]

Without a GPU it says so and exits (status 2) at once. Each section runs on its own, so that one
that fails records its error and the run goes on: a GPU host is lent for minutes. Figures, each
next to the in-run baseline it should approach:

- model only: OpenCLIP's image tower (ViT-B-32, ViT-L-14, random weights) on uint8 batches from
  the host, against the tower on inputs already on the device;
- nvJPEG decode of 1024-px JPEGs (decode, orientation, crop, resize, PDQ), against decode alone;
- pixel models (open_nsfw, image_safety_s) on the device they ran on, against the image tower;
- end-to-end ingest of 1024-px JPEGs with the shipped policy and without its pixel models,
  against the model stage alone, and the device each stage actually ran on;
- video frames (uniform:8) through ingest, against the model stage alone on the same frames;
- a mixed decode batch (sizes, progressive, grayscale, EXIF-rotated, corrupt, 3,200 px) that must
  give the CPU path's rows;
- `pytest -m gpu`.

`--cpu-dry-run` runs every section on the CPU with a tiny model and counts: it checks this script,
not a GPU (the test suite runs it).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/*.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class Sizes:
    device: str
    models: tuple[str, ...]
    tower_images: int
    pixel_frames: int
    photos: int  # distinct 1024-px JPEGs made
    ingest_rows: int  # rows of the end-to-end ingest (the photos repeated)
    videos: int
    pytest: bool


GPU = Sizes("cuda", ("ViT-B-32", "ViT-L-14"), 4096, 512, 1024, 40_000, 64, True)
DRY_RUN = Sizes("cpu", ("shoplens-micro",), 16, 8, 8, 16, 1, False)
# Images/s end to end on one H100 or H200. The shipped policy reads text (OCR) on the node's CPU cores,
# about one picture a CPU-second at 640 px (benchmarks/ocr.py): with 16 cores that, not the GPU, bounds it.
GOALS = {"no_pixel_models_no_ocr": 8000, "shipped_policy": 4000}


def gpu_missing() -> str | None:
    """Why this host cannot run the benchmark, or None. `nvidia-smi` answers before torch loads."""
    if shutil.which("nvidia-smi") is None:
        return "no GPU here: nvidia-smi is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no GPU here: torch sees no CUDA device"
    return None


def rate(work, items: int, device: str, repeats: int = 3) -> float:
    """Items/s of `work()` (after one warm-up call), synchronised with the device."""
    import torch

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    work()
    sync()
    started = time.perf_counter()
    for _ in range(repeats):
        work()
    sync()
    return repeats * items / (time.perf_counter() - started)


def model_only(sizes: Sizes) -> dict:
    import torch

    from shoplens.encoders.clip import ClipEncoder, ClipSpec

    figures = {}
    for model in sizes.models:
        encoder = ClipEncoder(ClipSpec(model, "random", sizes.device), chunk=512)
        side = encoder.image_size
        pixels = np.random.default_rng(0).integers(0, 255, (sizes.tower_images, side, side, 3), dtype=np.uint8)
        on_device = torch.randn((min(512, sizes.tower_images), 3, side, side), device=sizes.device)

        def tower_on_device(batch=on_device, encoder=encoder):
            with torch.inference_mode(), encoder._precision():
                encoder.model.encode_image(batch)

        figures[model] = {
            "images_per_s": round(rate(lambda encoder=encoder, pixels=pixels: encoder.encode_images(pixels), len(pixels), sizes.device), 1),
            "baseline_tower_on_device_images_per_s": round(rate(tower_on_device, len(on_device), sizes.device), 1),
            "device": encoder.device,
        }
    return figures


def make_photos(folder: Path, count: int) -> list[bytes]:
    from benchmarks.ingest_images import PHOTOS
    from benchmarks.synthetic import photo_variants

    return [(folder / name).read_bytes() for name, _ in photo_variants(folder, count, list(PHOTOS), 1024)]


def nvjpeg(sizes: Sizes, photos: list[bytes]) -> dict:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from shoplens.encoders.device_decode import decode_on_device

    tensors = [torch.frombuffer(bytearray(p), dtype=torch.uint8) for p in photos]
    return {
        "images_per_s": round(rate(lambda: decode_on_device(photos, 224, sizes.device), len(photos), sizes.device), 1),
        "baseline_decode_only_images_per_s": round(
            rate(lambda: decode_jpeg(tensors, mode=ImageReadMode.RGB, device=sizes.device), len(photos), sizes.device), 1
        ),
    }


def pixel_models(sizes: Sizes) -> dict:
    from shoplens.encoders.clip import ClipEncoder, ClipSpec
    from shoplens.safety.pixels import PIXEL_MODELS

    frames = np.random.default_rng(0).integers(0, 255, (sizes.pixel_frames, 224, 224, 3), dtype=np.uint8)
    encoder = ClipEncoder(ClipSpec(sizes.models[0], "random", sizes.device))
    figures = {
        "baseline_image_tower_images_per_s": round(
            rate(lambda: encoder.encode_images(frames[:, : encoder.image_size, : encoder.image_size]), len(frames), sizes.device), 1
        )
    }
    for name, model_cls in PIXEL_MODELS.items():
        model = model_cls(num_threads=4, device=sizes.device)
        figures[name] = {
            "images_per_s": round(rate(lambda model=model: model(frames), len(frames), sizes.device), 1),
            "ran_on": model.session.get_providers()[0],
        }
    return figures


def ingest_figures(sizes: Sizes, folder: Path, photos: int) -> dict:
    """End to end on `sizes.ingest_rows` rows (the photos, repeated under new ids), with the shipped
    policy and without its pixel models, against the model stage alone."""
    from benchmarks.ingest_images import model_only_rates, policy_without, title
    from shoplens.pipelines.ingest.job import IngestConfig, ingest
    from shoplens.pipelines.ingest.ray_adapter import plan_cluster

    lines = ["item_id,kind,title,image"] + [f"item-{n:06d},product,{title(n)},{n % photos:05d}.jpg" for n in range(sizes.ingest_rows)]
    (folder / "repeated.csv").write_text("\n".join(lines) + "\n")
    figures = {}
    for label, policy in (("shipped_policy", None), ("no_pixel_models_no_ocr", policy_without(folder, pixel_models=True, ocr=True))):
        db = folder / f"db-{label}"
        config = IngestConfig(
            manifest=folder / "repeated.csv", db=str(db), model=sizes.models[0], pretrained="random", device="auto", policy=policy
        )
        summary = ingest(config)
        pools = plan_cluster("auto")
        model_stage, _, _ = model_only_rates(
            folder, min(photos, 1000), sizes.models[0], "random", pools.embed.device, pools.embed.threads, pools.embed.batch_size, policy
        )
        figures[label] = {
            "images_per_s": summary.items_per_s,
            "ok": summary.ok,
            "rows": summary.items,
            "seconds": summary.seconds,
            "baseline_model_stage_images_per_s": round(model_stage, 1),
            "embed_device": pools.embed.device,
            "embed_actors": pools.embed.size,
            "jpegs_decoded_on": "the embedding device" if pools.embed.num_gpus else "the decode stage's CPUs",
        }
        shutil.rmtree(db)
    return figures


def video(sizes: Sizes) -> dict:
    from benchmarks.video_frames import model_stage_rates, timed_ingest

    frames, seconds, _, pools = timed_ingest(sizes.videos, sizes.models[0], "random", "auto")
    model_stage, _ = model_stage_rates(
        sizes.videos, sizes.models[0], "random", pools.embed.device, pools.embed.threads, pools.embed.batch_size
    )
    return {
        "frames_per_s": round(frames / seconds, 1),
        "baseline_model_stage_frames_per_s": round(model_stage, 1),
        "frames_decoded_on": "cpu",  # OpenCV has no NVDEC here
    }


def mixed_decode(sizes: Sizes) -> dict:
    """A batch of what catalogs hold, decoded on the device: the CPU path's rows, pixel for pixel
    within resampling rounding."""
    from PIL import Image

    from benchmarks.ingest_images import PHOTOS
    from benchmarks.synthetic import photo_variants
    from shoplens.encoders.device_decode import decode_on_device

    def jpeg(image, **kwargs) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", **kwargs)
        return buffer.getvalue()

    with tempfile.TemporaryDirectory() as tmp:
        photo = Image.open(Path(tmp) / photo_variants(Path(tmp), 1, list(PHOTOS), 1024)[0][0]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    cases = {
        "1024 px": jpeg(photo, quality=90),
        "64 x 48": jpeg(photo.resize((64, 48)), quality=90),
        "progressive": jpeg(photo, quality=90, progressive=True),
        "grayscale": jpeg(photo.convert("L"), quality=90),
        "exif rotated": jpeg(photo.crop((0, 0, 900, 600)), quality=90, exif=exif),
        "truncated": jpeg(photo, quality=90)[:20_000],
        "3200 px": jpeg(photo.resize((3200, 3200)), quality=85),
    }
    images = list(cases.values())
    on_device, on_cpu = decode_on_device(images, 224, sizes.device), decode_on_device(images, 224, "cpu")
    rows = {}
    for n, name in enumerate(cases):
        difference = float((on_device.pixels[n].cpu().int() - on_cpu.pixels[n].int()).abs().float().mean())
        same = (on_device.errors[n] is None) == (on_cpu.errors[n] is None) and (on_cpu.errors[n] is not None or difference < 2.0)
        rows[name] = {"same_row_as_cpu": same, "mean_pixel_difference": round(difference, 3), "error": on_device.errors[n]}
    return {"all_same_as_cpu": all(r["same_row_as_cpu"] for r in rows.values()), "images": rows}


def gpu_tests() -> dict:
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:randomly"], cwd=root, capture_output=True, text=True, timeout=240
    )
    return {"exit_code": run.returncode, "summary": (run.stdout.strip().splitlines() or [""])[-1]}


def section(figures: dict, name: str, work) -> None:
    started = time.perf_counter()
    try:
        figures[name] = work()
    except Exception as e:  # one section's failure must not cost the others' figures
        figures[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=5)}
    figures[name]["section_seconds"] = round(time.perf_counter() - started, 1)
    print(f"{name:14s} {json.dumps(figures[name])}", file=sys.stderr)


def table(figures: dict) -> str:
    lines = [f"{'figure':58s} {'value':>12s}  baseline it should approach"]

    def row(label, value, baseline=""):
        lines.append(f"{label:58s} {value:>12}  {baseline}")

    for model, f in figures.get("model_only", {}).items():
        if isinstance(f, dict) and "images_per_s" in f:
            row(
                f"model only, {model}, images/s ({f['device']})",
                f["images_per_s"],
                f"{f['baseline_tower_on_device_images_per_s']} on device-resident inputs",
            )
    f = figures.get("nvjpeg", {})
    if "images_per_s" in f:
        row(
            "nvJPEG decode + crop + resize + PDQ, 1024-px JPEGs, images/s",
            f["images_per_s"],
            f"{f['baseline_decode_only_images_per_s']} decode alone",
        )
    f = figures.get("pixel_models", {})
    for name in ("open_nsfw", "image_safety_s"):
        if name in f:
            row(
                f"pixel model {name}, images/s ({f[name]['ran_on']})",
                f[name]["images_per_s"],
                f"{f['baseline_image_tower_images_per_s']} image tower",
            )
    for label, f in figures.get("ingest", {}).items():
        if isinstance(f, dict) and "images_per_s" in f:
            row(
                f"ingest end to end, {label}, images/s (embed on {f['embed_device']})",
                f["images_per_s"],
                f"{f['baseline_model_stage_images_per_s']} model stage alone; goal {GOALS[label]:,}",
            )
    f = figures.get("video", {})
    if "frames_per_s" in f:
        row("video ingest, uniform:8, frames/s", f["frames_per_s"], f"{f['baseline_model_stage_frames_per_s']} model stage alone")
    f = figures.get("mixed_decode", {})
    if "all_same_as_cpu" in f:
        row("mixed decode batch gives the CPU path's rows", str(f["all_same_as_cpu"]))
    f = figures.get("pytest_gpu", {})
    if "summary" in f:
        row("pytest -m gpu", f["summary"][:12], f["summary"])
    for name, f in figures.items():
        if isinstance(f, dict) and "error" in f:
            row(f"section {name} FAILED", "-", f["error"][:120])
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu-figures.json"))
    parser.add_argument("--install-seconds", type=float, default=None, help="how long the install took, for the record")
    parser.add_argument("--cpu-dry-run", action="store_true", help="every section on the CPU, tiny: checks this script")
    args = parser.parse_args()
    if not args.cpu_dry_run and (missing := gpu_missing()):
        print(f"benchmarks/gpu.py: {missing}; nothing measured", file=sys.stderr)
        return 2
    sizes = DRY_RUN if args.cpu_dry_run else GPU
    started = time.perf_counter()
    figures: dict = {"benchmark": "gpu", "install_seconds": args.install_seconds, "dry_run": args.cpu_dry_run}
    if not args.cpu_dry_run:
        import torch

        figures["gpu"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        photos = make_photos(folder, sizes.photos)
        section(figures, "model_only", lambda: model_only(sizes))
        section(figures, "nvjpeg", lambda: nvjpeg(sizes, photos))
        section(figures, "pixel_models", lambda: pixel_models(sizes))
        section(figures, "mixed_decode", lambda: mixed_decode(sizes))
        section(figures, "ingest", lambda: ingest_figures(sizes, folder, len(photos)))
        section(figures, "video", lambda: video(sizes))
    if sizes.pytest:
        section(figures, "pytest_gpu", gpu_tests)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(figures, indent=2))
    print(table(figures))
    print(f"({figures['seconds']} s; figures in {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
