"""Peak memory of `shoplens review export` at two queue sizes: it must not grow with the queue.

    python benchmarks/review_export.py [--sizes 10000 100000]

Each size is a LanceDB `items` table written directly (512-d unit vectors, every item queued
for review, products whose images are small JPEGs made from package-shipped photos), exported
in a fresh subprocess whose peak resident memory (VmHWM) is read when it ends; evidence
JPEGs are written for every item as in a real export.
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

# Peak memory is VmHWM: ru_maxrss survives exec, so a child would report its parent's peak.
EXPORT = """
import json, re, sys, time
from pathlib import Path
from shoplens.pipelines.moderation.review_queue import export_queue
started = time.perf_counter()
summary = export_queue(sys.argv[1], Path(sys.argv[2]))
peak_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
print(json.dumps({"queued": summary["queued"], "seconds": time.perf_counter() - started, "peak_rss_mb": peak_kb / 1024}))
"""


def make_table(folder: Path, rows: int, dim: int = 512, chunk: int = 20_000) -> str:
    import datetime as dt

    import pyarrow as pa
    import skimage
    from PIL import Image

    from shoplens.pipelines.store.database import ItemStore
    from shoplens.pipelines.store.schemas import items_schema
    from shoplens.safety.policy import load_policy

    media = folder / "media"
    media.mkdir()
    photos = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg"]
    for name in photos:
        Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB").resize((96, 96)).save(media / f"{name}.jpg")
    policy = load_policy()
    schema = items_schema(dim, policy.names)
    store = ItemStore(str(folder / "db"))
    table = store.items(dim, policy.names)
    rng = np.random.default_rng(0)
    now = dt.datetime.now(dt.timezone.utc)
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        vectors = rng.normal(size=(n, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        risks = rng.uniform(0, 1, (n, len(policy.names))).astype(np.float32)
        columns = {f.name: pa.nulls(n, f.type) for f in schema}
        columns |= {
            "item_id": pa.array([f"item-{start + i:07d}" for i in range(n)]),
            "kind": pa.array(["product"] * n),
            "title": pa.array([f"product {start + i}" for i in range(n)]),
            "media_uri": pa.array([str(media / f"{photos[(start + i) % len(photos)]}.jpg") for i in range(n)]),
            "status": pa.array(["ok"] * n),
            "model": pa.array(["open_clip/ViT-B-32/random-seed0"] * n),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
            "updated_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
            "risk": pa.array(risks.max(axis=1)),
            "decision": pa.array(["review"] * n),
            "safety_version": pa.array([policy.version] * n),
            **{f"risk_{c}": pa.array(risks[:, k]) for k, c in enumerate(policy.names)},
        }
        table.add(pa.table(columns, schema=schema))
    return str(folder / "db")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    results = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            db = make_table(Path(tmp), size)
            print(f"{size:>7} items: table made in {time.perf_counter() - started:.0f} s; exporting ...", file=sys.stderr)
            out = subprocess.run(
                [sys.executable, "-c", EXPORT, db, str(Path(tmp) / "queue")],
                capture_output=True,
                text=True,
                env=os.environ | {"PYTHONPATH": str(Path(__file__).parent.parent)},
                check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(result)
            print(
                f"{size:>7} items: exported in {result['seconds']:.1f} s ({size / result['seconds']:.0f} items/s), "
                f"peak memory {result['peak_rss_mb']:.0f} MB"
            )
    figures = {"benchmark": "review_export", "runs": results}
    if len(results) > 1:
        figures["peak_memory_ratio_largest_to_smallest"] = round(results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"], 3)
        print(f"peak memory ratio, {args.sizes[-1]} / {args.sizes[0]} items: {figures['peak_memory_ratio_largest_to_smallest']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
