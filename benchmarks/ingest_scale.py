"""Ingest at scale: throughput and peak memory for catalogs of different sizes, and their ratio.

    python benchmarks/ingest_scale.py [--sizes 10000 100000] [--images 64]

Each catalog has distinct item_ids and titles over a few small JPEGs (`--images` of them, 96 px,
reused under many ids: the model is `shoplens-micro` with random weights, so what is measured is
the pipeline, not the model; the policy is the shipped one without its pixel classifiers, whose
ONNX models would otherwise dominate the time on a CPU). Each ingest runs as `shoplens ingest` in a subprocess, which starts
its own local Ray; its memory is sampled twice a second with psutil: the driver's RSS, and the RSS
summed over the driver and every process under it (Ray's GCS, raylet and workers; pages of the
shared object store are counted once per process that maps them, so that sum over-counts).
A driver whose memory follows the catalog size would show a ratio near the size ratio; bounded
memory shows a ratio near 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ingest_images import PHOTOS, policy_without  # noqa: E402


def make_catalog(folder: Path, count: int, images: int, side: int = 96) -> Path:
    import skimage
    from PIL import Image

    media = folder / "media"
    media.mkdir(exist_ok=True)
    for n in range(images):
        photo = Image.open(Path(skimage.__file__).parent / "data" / PHOTOS[n % len(PHOTOS)]).convert("RGB")
        photo.rotate(n * 7).resize((side, side)).save(media / f"{n}.jpg", quality=85)
    manifest = folder / f"catalog-{count}.csv"
    with manifest.open("w") as f:
        f.write("item_id,kind,title,image\n")
        for n in range(count):
            f.write(f"item-{n:07d},product,product number {n},media/{n % images}.jpg\n")
    return manifest


def run_ingest(manifest: Path, db: Path, policy: Path) -> dict:
    """Runs one ingest in a subprocess; returns its summary with the peak memory seen."""
    command = [
        sys.executable,
        "-c",
        "from shoplens.pipelines.cli import main; main()",
        "ingest",
        str(manifest),
        "--db",
        str(db),
        "--model",
        "shoplens-micro",
        "--pretrained",
        "random",
        "--device",
        "cpu",
        "--policy",
        str(policy),
    ]
    child = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    peak = {"driver_rss_mb": 0.0, "all_processes_rss_mb": 0.0}
    done = threading.Event()

    def sample():
        driver = psutil.Process(child.pid)
        while not done.wait(0.5):
            try:
                processes = [driver, *driver.children(recursive=True)]
                rss = {p.pid: p.memory_info().rss for p in processes if p.is_running()}
            except psutil.Error:
                continue  # a process ended between listing and reading it
            peak["driver_rss_mb"] = max(peak["driver_rss_mb"], rss.get(child.pid, 0) / 2**20)
            peak["all_processes_rss_mb"] = max(peak["all_processes_rss_mb"], sum(rss.values()) / 2**20)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = child.communicate()
    done.set()
    sampler.join()
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["exit_code"] == 0, summary
    return {
        "items": summary["items"],
        "seconds": summary["seconds"],
        "items_per_s": summary["items_per_s"],
        **{k: round(v, 1) for k, v in peak.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        policy = policy_without(folder, pixel_models=True, ocr=True)
        for size in args.sizes:
            manifest = make_catalog(folder, size, args.images)
            print(f"ingesting {size:,} items ...", file=sys.stderr)
            runs.append(run_ingest(manifest, folder / f"db-{size}", policy))
            print(json.dumps(runs[-1]), file=sys.stderr)
    small, large = runs[0], runs[-1]
    print(
        json.dumps(
            {
                "benchmark": "ingest_scale",
                "runs": runs,
                "driver_peak_ratio": round(large["driver_rss_mb"] / small["driver_rss_mb"], 2),
                "all_processes_peak_ratio": round(large["all_processes_rss_mb"] / small["all_processes_rss_mb"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
