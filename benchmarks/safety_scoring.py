"""The cost of safety scoring against the cost of embedding, on the same items in the same run.

    python benchmarks/safety_scoring.py [--images 256] [--model ViT-B-32] [--threads 2]

On 1024-pixel JPEGs made from package-shipped photos, decoded once beforehand: the embed stage's
work (image and title through OpenCLIP), then each kind of safety signal on its output:
embedding-based signals (the policy's prompt banks on image and title vectors, and embedding
heads), each pixel classifier, and PDQ hashing (which decodes the whole picture again). Each
figure is a share of the embedding's time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from ingest_images import make_catalog, title  # noqa: E402


def timed(fn, repeats: int = 3) -> float:
    """Best wall time of `repeats` calls, after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="random")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from shoplens.encoders.clip import ClipEncoder, ClipSpec
    from shoplens.encoders.media import crop_to_model, load_image
    from shoplens.encoders.phash import pdq_hash
    from shoplens.safety.heads import train_heads
    from shoplens.safety.pixels import PIXEL_MODELS
    from shoplens.safety.policy import load_policy
    from shoplens.safety.prompts import PromptBank

    policy = load_policy()
    encoder = ClipEncoder(ClipSpec(args.model, args.pretrained, "cpu"), num_threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_catalog(folder, args.images)
        files = [(folder / f"{n:05d}.jpg").read_bytes() for n in range(args.images)]
    pixels = np.stack([crop_to_model(load_image(data, encoder.image_size), encoder.image_size) for data in files])
    titles = [title(n) for n in range(args.images)]
    batches = range(0, args.images, args.batch)

    def embed():
        for s in batches:
            encoder.encode_images(pixels[s : s + args.batch])
            encoder.encode_texts(titles[s : s + args.batch])

    embedding = timed(embed, repeats=1)
    vectors, text_vectors = encoder.encode_images(pixels), encoder.encode_texts(titles)
    prompts = PromptBank(policy, encoder.encode_texts, encoder.provenance)
    labels = {c: (np.arange(args.images), np.arange(args.images) % (k + 2) == 0) for k, c in enumerate(policy.names)}
    heads = train_heads(vectors, labels, encoder.provenance)

    def embedding_signals():
        for s in batches:
            prompts(vectors[s : s + args.batch])
            prompts(text_vectors[s : s + args.batch])
            heads(vectors[s : s + args.batch])

    costs = {"embedding-based signals (prompt banks on image and title, heads)": timed(embedding_signals)}
    for name in policy.pixel_models:
        model = PIXEL_MODELS[name](args.threads)
        costs[f"pixel model {name}"] = timed(lambda model=model: [model(pixels[s : s + args.batch]) for s in batches], repeats=1)
    costs["PDQ hashing (decode at 512 px + hash)"] = timed(lambda: [pdq_hash(np.asarray(load_image(d, 512))) for d in files], repeats=1)

    print(f"embedding (image + title, {args.model}, {args.threads} threads): {args.images / embedding:8.2f} items/s")
    figures = {
        "benchmark": "safety_scoring",
        "images": args.images,
        "model": encoder.provenance,
        "threads": args.threads,
        "embedding_items_per_s": round(args.images / embedding, 2),
    }
    for name, seconds in costs.items():
        print(f"{name:<68}: {args.images / seconds:10.1f} items/s, {100 * seconds / embedding:8.3f}% of embedding")
        figures[name.split(" (")[0].replace(" ", "_") + "_share_of_embedding"] = round(seconds / embedding, 6)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
