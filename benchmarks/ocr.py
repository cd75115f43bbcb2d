"""What OCR costs on a CPU, against the embedding of the same pictures, in the same run.

    python benchmarks/ocr.py [--images 48] [--threads 2] [--model ViT-B-32]

Pictures: 1024-px catalog photos (crops of package-shipped photos), half of them with two lines of
product text painted on (a phone number, a brand), as sellers do. OCR (`encoders.ocr.TextReader`:
rapidocr's bundled PP-OCRv6 models) reads each picture scaled to at most 960 and 640 pixels, and
the whole picture resized to the model's 224 px (the ingest's frame is a centre crop: resized
whole, the painted text stays in it); the baseline is OpenCLIP's image tower on the
same pictures' 224-px frames, with the same threads. The ratio says how many embeddings' worth of
time one picture's OCR costs, which decides where OCR runs in the ingest job.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/*.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = (("WhatsApp +44 7911 123456", "Genuine leather, best price"), ("DM me on Telegram @shopdeals", "Original brand 2026"))


def pictures(count: int) -> list[np.ndarray]:
    """`count` 1024-px RGB photos; every other one with two lines of text painted on it."""
    import cv2
    from PIL import Image

    from benchmarks.ingest_images import PHOTOS
    from benchmarks.synthetic import photo_variants

    with tempfile.TemporaryDirectory() as tmp:
        made = [np.array(Image.open(Path(tmp) / name).convert("RGB")) for name, _ in photo_variants(Path(tmp), count, list(PHOTOS), 1024)]
    for n, image in enumerate(made[::2]):
        for row, text in enumerate(TEXTS[n % len(TEXTS)]):
            cv2.putText(image, text, (40, 120 + 110 * row), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (255, 255, 255), 8)
            cv2.putText(image, text, (40, 120 + 110 * row), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (10, 10, 10), 3)
    return made


def per_image_ms(work, images: list) -> float:
    work(images[0])  # warm-up
    started = time.perf_counter()
    for image in images:
        work(image)
    return (time.perf_counter() - started) / len(images) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="ViT-B-32")
    args = parser.parse_args()

    import cv2

    from shoplens.encoders.clip import ClipEncoder, ClipSpec
    from shoplens.encoders.ocr import TextReader

    images = pictures(args.images)
    encoder = ClipEncoder(ClipSpec(args.model, "random", "cpu"), num_threads=args.threads)
    frames = np.stack([cv2.resize(image, (encoder.image_size, encoder.image_size), interpolation=cv2.INTER_AREA) for image in images])
    started = time.perf_counter()
    encoder.encode_images(frames)
    embed_ms = (time.perf_counter() - started) / len(frames) * 1000

    figures = {"benchmark": "ocr", "images": args.images, "threads": args.threads, "embedding_ms_per_image": round(embed_ms, 1)}
    print(f"embedding ({encoder.provenance}, 224 px, batch {len(frames)}): {embed_ms:7.1f} ms an image (the baseline)")
    found = {}
    for label, max_side, source in (("960 px", 960, images), ("640 px", 640, images), ("224-px frame", 224, list(frames))):
        reader = TextReader(max_side=max_side, num_threads=args.threads)
        ms = per_image_ms(reader, source)
        lines = [reader(image) for image in source[::2]]  # the pictures with text
        found[label] = sum(bool(found_lines) for found_lines in lines) / len(lines)
        texts = [line.text for found_lines in lines for line in found_lines]
        figures[f"ocr_ms_per_image_{max_side}"] = round(ms, 1)
        figures[f"ocr_to_embedding_{max_side}"] = round(ms / embed_ms, 2)
        figures[f"pictures_with_text_read_{max_side}"] = round(found[label], 2)
        print(
            f"OCR at {label:13s}: {ms:7.1f} ms an image, {ms / embed_ms:5.2f}x the embedding; text read in {found[label]:.0%} of the pictures with text (e.g. {texts[:2]})"
        )
    no_text = TextReader(max_side=960, num_threads=args.threads)
    ms = per_image_ms(no_text, images[1::2])
    figures["ocr_ms_per_image_without_text_960"] = round(ms, 1)
    print(f"OCR at 960 px, pictures without text only: {ms:7.1f} ms an image (detection alone, nothing to recognise)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
