"""OpenCLIP's image tower on ONNX Runtime's CPU provider against torch eager, in the same run.

    python benchmarks/onnx_clip.py [--model ViT-B-32] [--batch 32] [--threads 2] [--repeats 5]

Whether shoplens should run its towers on ONNX Runtime on CPUs depends on this ratio: the tower
(random weights) is exported with `torch.onnx.export` (opset 17), checked against torch's output,
and both run the same batch with the same thread count, alternately, so that a noisy machine
slows both alike. Needs the `onnx` package (the `dev` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from shoplens.encoders.clip import ClipEncoder, ClipSpec

    torch.set_num_threads(args.threads)
    encoder = ClipEncoder(ClipSpec(args.model, "random", "cpu"), num_threads=args.threads)
    tower = encoder.model.visual.eval()
    side = encoder.image_size
    batch = torch.randn(args.batch, 3, side, side)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image_tower.onnx"
        started = time.perf_counter()
        torch.onnx.export(
            tower, (batch[:2],), path, input_names=["pixels"], output_names=["features"],
            dynamic_axes={"pixels": {0: "n"}}, opset_version=17, dynamo=False,
        )  # fmt: skip
        export_s = time.perf_counter() - started
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        started = time.perf_counter()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        load_s = time.perf_counter() - started

    def run_torch():
        with torch.inference_mode():
            return tower(batch).numpy()

    def run_onnx():
        return session.run(None, {"pixels": batch.numpy()})[0]

    difference = float(np.abs(run_torch() - run_onnx()).max())  # also the warm-up
    timings = {"torch": [], "onnx": []}
    for _ in range(args.repeats):  # alternately: drift in the machine's speed hits both
        for name, run in (("torch", run_torch), ("onnx", run_onnx)):
            started = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - started)
    rates = {name: args.batch / float(np.median(seconds)) for name, seconds in timings.items()}
    figures = {
        "benchmark": "onnx_clip",
        "model": encoder.provenance,
        "batch": args.batch,
        "threads": args.threads,
        "torch_images_per_s": round(rates["torch"], 2),
        "onnx_images_per_s": round(rates["onnx"], 2),
        "ratio": round(rates["onnx"] / rates["torch"], 3),
        "max_abs_difference": difference,
        "export_seconds": round(export_s, 1),
        "session_load_seconds": round(load_s, 2),
    }
    print(f"image tower, {args.model}, batch {args.batch}, {args.threads} threads (median of {args.repeats})")
    print(f"  torch eager fp32       : {rates['torch']:8.2f} images/s")
    print(
        f"  ONNX Runtime CPU fp32  : {rates['onnx']:8.2f} images/s ({rates['onnx'] / rates['torch']:.2f}x), max |difference| {difference:.1e}"
    )
    print(f"  export {export_s:.1f} s, session load {load_s:.2f} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
