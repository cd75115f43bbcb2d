"""`shoplens safety bank add`: known violating images into the PDQ hash bank, and every stored
item or frame that matches them blocked at once (an unchanged item is never scored again)."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np

from shoplens.encoders.media import ImageLimits, MediaError, load_image, read_media
from shoplens.encoders.phash import pdq_hash
from shoplens.encoders.rows import BLOCK
from shoplens.pipelines.store.database import ItemStore
from shoplens.pipelines.store.schemas import FRAMES, ITEMS
from shoplens.safety.hashbank import HashBank
from shoplens.safety.policy import Policy, PolicyError

HASH_SIDE = 512  # PDQ downsamples to 64x64 itself: decoding beyond this buys nothing
SCAN_ROWS = 65_536  # stored hashes matched a batch at a time: memory stays flat however large the tables


def add_to_bank(db: str, files: list[Path], category: str, policy: Policy) -> dict:
    """Hashes each file and stores it as a bank entry of `category`, then blocks the stored items
    whose image or frames match a new entry. A file that cannot be read or decoded, or whose
    hash is too featureless to match reliably, is reported and skipped; a file given twice (the
    same bytes) is one entry."""
    import pyarrow as pa

    if category not in policy.categories:
        raise PolicyError(f"--category {category!r} is not in policy {policy.version} ({', '.join(policy.names)})")
    entries, errors = {}, []
    for path in files:
        try:
            data = read_media(str(path), ImageLimits().max_bytes)
            pdq, quality = pdq_hash(np.asarray(load_image(data, HASH_SIDE, name=str(path))))
        except MediaError as e:
            errors.append({"file": str(path), "error": str(e)})
            continue
        if quality < policy.hash_bank.min_quality:
            errors.append(
                {
                    "file": str(path),
                    "error": f"PDQ quality {quality} is below {policy.hash_bank.min_quality}: too featureless to match reliably",
                }
            )
            continue
        entry_id = hashlib.sha256(data).hexdigest()[:16]
        entries.setdefault(
            entry_id,
            {
                "entry_id": entry_id,
                "category": category,
                "pdq": pdq,
                "quality": quality,
                "source": path.name,
                "added_at": dt.datetime.now(dt.timezone.utc),
            },
        )
    store = ItemStore(db)
    blocked = {"items": 0, "frames": 0}
    if entries:
        schema = pa.schema(
            [
                ("entry_id", pa.string()),
                ("category", pa.string()),
                ("pdq", pa.string()),
                ("quality", pa.int32()),
                ("source", pa.string()),
                ("added_at", pa.timestamp("us", tz="UTC")),
            ]
        )
        store.add_to_bank(pa.Table.from_pylist(list(entries.values()), schema=schema))
        new = list(entries.values())
        bank = HashBank([e["entry_id"] for e in new], [e["category"] for e in new], [e["pdq"] for e in new])
        blocked = block_stored_matches(store, bank, policy)
    return {
        "command": "safety bank add",
        "db": db,
        "category": category,
        "added": len(entries),
        "entries": list(entries),
        "blocked_items": blocked["items"],
        "blocked_frames": blocked["frames"],
        "failed": len(errors),
        "errors": errors,
    }


def block_stored_matches(store: ItemStore, bank: HashBank, policy: Policy) -> dict[str, int]:
    """Blocks every stored item whose image (products) or a frame (videos) matches `bank`, as an
    ingest would have: `decision` block, `hash_match` the entry, the entry's category risk 1
    where the item was scored. Returns how many items and frames matched."""
    import pyarrow as pa

    matched: dict[str, str] = {}  # item_id -> entry_id
    frame_updates = []
    for batch in store.scan(FRAMES, ["item_id", "frame_index", "pdq", "pdq_quality"], SCAN_ROWS):
        entry = _matches(bank, batch, policy)
        for k in np.flatnonzero(entry >= 0):
            item_id = batch["item_id"][k].as_py()
            matched.setdefault(item_id, bank.entry_ids[entry[k]])
            frame_updates.append((item_id, batch["frame_index"][k].as_py(), bank.entry_ids[entry[k]], bank.categories[entry[k]]))
    for batch in store.scan(ITEMS, ["item_id", "pdq", "pdq_quality"], SCAN_ROWS):
        entry = _matches(bank, batch, policy)
        for k in np.flatnonzero(entry >= 0):
            matched.setdefault(batch["item_id"][k].as_py(), bank.entry_ids[entry[k]])
    if frame_updates:
        store.block_frames(
            pa.table(
                {
                    "item_id": [f[0] for f in frame_updates],
                    "frame_index": pa.array([f[1] for f in frame_updates], pa.int64()),
                    "hash_match": [f[2] for f in frame_updates],
                    "category": [f[3] for f in frame_updates],
                }
            )
        )
    if matched:
        store.block_items(matched, dict(zip(bank.entry_ids, bank.categories)), BLOCK)
    return {"items": len(matched), "frames": len(frame_updates)}


def _matches(bank: HashBank, batch, policy: Policy) -> np.ndarray:
    if "pdq" not in batch.schema.names:  # a table from before fingerprinting: no hash to match
        return np.full(batch.num_rows, -1)
    hashes = batch["pdq"].to_pylist()
    qualities = np.array([-1 if q is None else q for q in batch["pdq_quality"].to_pylist()], np.int64)
    return bank.match(hashes, qualities, policy.hash_bank)[0]
