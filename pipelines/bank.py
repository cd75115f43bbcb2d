"""`shoplens safety bank add`: known violating images into the PDQ hash bank."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np

from encoders.media import ImageLimits, MediaError, load_image, read_media
from encoders.phash import pdq_hash
from pipelines.store import ItemStore
from safety.policy import Policy, PolicyError

HASH_SIDE = 512  # PDQ downsamples to 64x64 itself: decoding beyond this buys nothing


def add_to_bank(db: str, files: list[Path], category: str, policy: Policy) -> dict:
    """Hashes each file and stores it as a bank entry of `category`. A file that cannot be read
    or decoded, or whose hash is too featureless to match reliably, is reported and skipped."""
    import pyarrow as pa

    if category not in policy.categories:
        raise PolicyError(f"--category {category!r} is not in policy {policy.version} ({', '.join(policy.names)})")
    entries, errors = [], []
    for path in files:
        try:
            data = read_media(str(path), ImageLimits().max_bytes)
            pdq, quality = pdq_hash(np.asarray(load_image(data, HASH_SIDE, name=str(path))))
        except MediaError as e:
            errors.append({"file": str(path), "error": str(e)})
            continue
        if quality < policy.hash_bank.min_quality:
            errors.append({"file": str(path), "error": f"PDQ quality {quality} is below {policy.hash_bank.min_quality}: too featureless to match reliably"})
            continue
        entries.append({
            "entry_id": hashlib.sha256(data).hexdigest()[:16], "category": category, "pdq": pdq, "quality": quality,
            "source": path.name, "added_at": dt.datetime.now(dt.timezone.utc),
        })
    if entries:
        schema = pa.schema([("entry_id", pa.string()), ("category", pa.string()), ("pdq", pa.string()),
                            ("quality", pa.int32()), ("source", pa.string()), ("added_at", pa.timestamp("us", tz="UTC"))])
        ItemStore(db).add_to_bank(pa.Table.from_pylist(entries, schema=schema))
    return {"command": "safety bank add", "db": db, "category": category, "added": len(entries),
            "entries": [e["entry_id"] for e in entries], "failed": len(errors), "errors": errors}

