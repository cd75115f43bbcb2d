"""What OCR costs on a CPU, against the embedding of the same pictures, in the same run, and how
well it reads: character error rate and the `off_platform_contact` rule's precision and recall.

    python benchmarks/ocr.py [--images 48] [--threads 2] [--model ViT-B-32] [--quality-set 160]

Pictures: 1024-px catalog photos (crops of package-shipped photos), half of them with two lines of
product text painted on (a phone number, a brand), as sellers do. OCR (`encoders.ocr.TextReader`:
rapidocr's bundled PP-OCRv6 models) reads each picture scaled to at most 960 and 640 pixels, and
the whole picture resized to the model's 224 px (the ingest's frame is a centre crop: resized
whole, the painted text stays in it); the baseline is OpenCLIP's image tower on the
same pictures' 224-px frames, with the same threads. The ratio says how many embeddings' worth of
time one picture's OCR costs, which decides where OCR runs in the ingest job.

Quality (`text_set`): 640 x 480 crops of the package photos with one line of text rendered on them
in five fonts (four OpenCV Hershey faces and Pillow's bundled FreeType font), 20 to 44 px high,
dark on light, light on dark or outlined on the photo, a third turned by up to 4 degrees, saved as
JPEG at quality 55 to 90. Lines are contact details (phone numbers of the shipped policy's
regions, e-mail addresses, links, messaging handles) or hard negatives (prices, sizes, model and
order numbers, dates, a brand's own domain, which the benchmark's policy allows). The character
error rate is the edit distance to the rendered text over its length, on horizontal text of at
least 20 px (the target, <= 5%) and on all of it; precision and recall are the shipped
`off_platform_contact` rules' on what OCR read, per picture.
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


CONTACTS = (
    "Call {phone}",
    "WhatsApp {phone}",
    "Tel: {phone}",
    "{phone}",
    "Email: {user}@gmail.com",
    "{user}.shop@outlook.com",
    "www.{user}-deals.xyz",
    "Order at {user}bags.shop",
    "Telegram @{user}",
    "WeChat ID: {user}88",
    "DM me on Instagram",
    "Line: {user}",
)
NEGATIVES = (
    "iPhone 15 Pro 256GB",
    "EU 42 / US 9",
    "Size M / L",
    "$1,299.00",
    "Only 49.99 EUR",
    "Order #A-48213",
    "2024-05-12",
    "Model A2848",
    "100% cotton",
    "Free shipping",
    "shop.brandname.com",
    "Made in Italy",
)
USERS = ("sunny", "bestprice", "luxe", "kiki", "mario", "zhang", "deals", "nova")
PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "IN", "BR", "MX")
ALLOWED = "brandname.com"


def text_set(count: int, seed: int = 0) -> list[dict]:
    """`count` generated pictures: {image, text, contact, upright, height}; see the module's docstring."""
    import io

    import phonenumbers
    import skimage
    from PIL import Image

    from benchmarks.ingest_images import PHOTOS

    rng = np.random.default_rng(seed)
    photos = [Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB") for name in PHOTOS]
    made = []
    for n in range(count):
        contact = n % 2 == 0
        user = USERS[rng.integers(len(USERS))]
        number = phonenumbers.example_number_for_type(PHONE_REGIONS[n // 2 % len(PHONE_REGIONS)], phonenumbers.PhoneNumberType.MOBILE)
        style = phonenumbers.PhoneNumberFormat.INTERNATIONAL if n % 4 == 0 else phonenumbers.PhoneNumberFormat.NATIONAL
        pattern = CONTACTS[n // 2 % len(CONTACTS)] if contact else NEGATIVES[n // 2 % len(NEGATIVES)]
        text = pattern.format(phone=phonenumbers.format_number(number, style), user=user)
        source = photos[n % len(photos)]
        scale = max(640 / source.size[0], 480 / source.size[1])
        picture = source.resize((round(source.size[0] * scale) + 1, round(source.size[1] * scale) + 1)).crop((0, 0, 640, 480))
        upright = n % 3 != 2
        layer, height = text_layer(text, font=n % 5, height=int(rng.integers(20, 45)), scheme=n % 3, top=int(rng.integers(40, 380)))
        if not upright:
            layer = layer.rotate(float(rng.uniform(-4, 4)), resample=Image.BICUBIC)
        picture = Image.alpha_composite(picture.convert("RGBA"), layer).convert("RGB")
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=int(rng.integers(55, 91)))
        image = np.array(Image.open(buffer).convert("RGB"))
        made.append({"image": image, "text": text, "contact": contact, "upright": upright, "height": height})
    return made


def text_layer(text: str, font: int, height: int, scheme: int, top: int, left: int = 24, max_width: int = 600):
    """(a 640 x 480 RGBA layer with `text` on it, the text's height in pixels): `font` 0-3 an OpenCV
    Hershey face, 4 Pillow's bundled FreeType font; `scheme` 0 dark on a light sticker, 1 light on a
    dark one, 2 white outlined in black on the photo. Text wider than `max_width` is set smaller."""
    import cv2
    from PIL import Image, ImageDraw, ImageFont

    ink = [(20, 20, 20, 255), (245, 245, 245, 255), (255, 255, 255, 255)][scheme]
    if font < 4:
        face = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX)[font]
        (width, unit), _ = cv2.getTextSize(text, face, 1.0, 2)
        face_scale = min(height / unit, max_width / width)
        thickness = max(1, round(face_scale * unit / 14))
        (width, height), _ = cv2.getTextSize(text, face, face_scale, thickness)
    else:
        pil_font = ImageFont.load_default(size=int(height * 1.35))
        x0, y0, x1, y1 = pil_font.getbbox(text)
        if x1 - x0 > max_width:
            pil_font = ImageFont.load_default(size=int(height * 1.35 * max_width / (x1 - x0)))
            x0, y0, x1, y1 = pil_font.getbbox(text)
        width, height = x1 - x0, y1 - y0
    canvas = np.zeros((480, 640, 4), np.uint8)
    if scheme < 2:
        sticker = (245, 245, 240, 255) if scheme == 0 else (25, 25, 30, 255)
        cv2.rectangle(canvas, (left - 10, top - 10), (left + width + 10, top + height + 14), sticker, -1)
    if font < 4:
        if scheme == 2:
            cv2.putText(canvas, text, (left, top + height), face, face_scale, (0, 0, 0, 255), thickness + 3, cv2.LINE_AA)
        cv2.putText(canvas, text, (left, top + height), face, face_scale, ink, thickness, cv2.LINE_AA)
        return Image.fromarray(canvas), height
    layer = Image.fromarray(canvas)
    outline = {"stroke_width": 2, "stroke_fill": (0, 0, 0, 255)} if scheme == 2 else {}
    ImageDraw.Draw(layer).text((left - x0, top - y0), text, font=pil_font, fill=ink, **outline)
    return layer, height


def quality(count: int, threads: int, max_side: int = 640) -> dict:
    """Character error rate and the contact rule's precision and recall on `text_set(count)`."""
    import yaml
    from rapidfuzz.distance import Levenshtein

    from shoplens.encoders.ocr import TextReader
    from shoplens.safety.policy import DEFAULT_POLICY, parse_policy
    from shoplens.safety.text_rules import TextRules

    document = yaml.safe_load(DEFAULT_POLICY.read_text())
    document["text_detectors"]["allowed_domains"] = [ALLOWED]
    rules = TextRules(parse_policy(yaml.safe_dump(document), "benchmark policy"))
    reader = TextReader(max_side=max_side, num_threads=threads)
    errors = {"target": [0, 0], "all": [0, 0]}
    outcomes = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    misses = []
    for sample in text_set(count):
        read = " ".join(line.text for line in reader(sample["image"]))
        distance = Levenshtein.distance(" ".join(read.split()), sample["text"])
        for subset in ("all", "target") if sample["upright"] and sample["height"] >= 20 else ("all",):
            errors[subset][0] += distance
            errors[subset][1] += len(sample["text"])
        flagged = any(m.category == "off_platform_contact" for m in rules.match(read))
        outcomes[{(True, True): "tp", (False, True): "fp", (True, False): "fn", (False, False): "tn"}[(sample["contact"], flagged)]] += 1
        if flagged != sample["contact"] and len(misses) < 6:
            misses.append((sample["text"], read))
    precision = outcomes["tp"] / max(1, outcomes["tp"] + outcomes["fp"])
    recall = outcomes["tp"] / max(1, outcomes["tp"] + outcomes["fn"])
    return {
        "quality_pictures": count,
        "cer_horizontal_20px": round(errors["target"][0] / errors["target"][1], 4),
        "cer_all": round(errors["all"][0] / errors["all"][1], 4),
        "contact_precision": round(precision, 4),
        "contact_recall": round(recall, 4),
        **outcomes,
        "misjudged": misses,
    }


def per_cpu_second(work, images: list) -> float:
    """Images `work` takes per second of this process's CPU time (every thread's)."""
    work(images[0])  # warm-up
    started = time.process_time()
    for image in images:
        work(image)
    return len(images) / (time.process_time() - started)


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
    parser.add_argument("--quality-set", type=int, default=160, help="generated pictures of the quality test (0: none)")
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
    reader = TextReader(max_side=640, num_threads=args.threads)
    ocr_rate, embed_rate = per_cpu_second(reader, images), per_cpu_second(lambda image: encoder.encode_images(image[None]), list(frames))
    figures |= {"ocr_images_per_cpu_s_640": round(ocr_rate, 2), "embedding_images_per_cpu_s": round(embed_rate, 2)}
    print(
        f"per CPU-second (process time, all threads): OCR at 640 px {ocr_rate:.2f} images, embedding {embed_rate:.2f} images one at a time"
    )
    if args.quality_set:
        figures |= quality(args.quality_set, args.threads)
        print(
            f"quality on {args.quality_set} generated pictures: CER {figures['cer_horizontal_20px']:.2%} on horizontal text of >= 20 px "
            f"({figures['cer_all']:.2%} on all); off_platform_contact precision {figures['contact_precision']:.3f}, "
            f"recall {figures['contact_recall']:.3f}"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
