"""The review queue: exported with evidence (Label Studio tasks and flat files), and reviewers'
decisions imported into the `labels` table."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from shoplens.encoders.decode import MAX_VIDEO_BYTES
from shoplens.encoders.errors import UsageError
from shoplens.encoders.media import ImageLimits, MediaError, load_image, local_copy, read_media
from shoplens.encoders.rows import BLOCK, OK, PRODUCT, REVIEW, UNSCORED, risk_column
from shoplens.encoders.video import frame_at
from shoplens.pipelines.store.database import ItemStore
from shoplens.pipelines.store.schemas import ITEMS
from shoplens.safety.review_format import ReviewFormatError, labeling_config, labels_from_csv, labels_from_label_studio, task

EVIDENCE_SIDE = 512
FETCH_ROWS = 512  # queued items read (and written out) at a time: memory does not grow with the queue
ITEM_FIELDS = (
    "item_id",
    "kind",
    "title",
    "category",
    "seller_id",
    "media_uri",
    "decision",
    "risk",
    "evidence_timestamp_s",
    "hash_match",
    "model",
    "safety_version",
    "ocr_text",
    "text_match",
)


FORMULA_STARTS = ("=", "+", "-", "@")  # and tab and carriage return, removed with the other control characters
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


class ReviewError(UsageError):
    """A review or calibration command that cannot run as asked."""


def export_queue(
    db: str,
    out: Path,
    limit: int | None = None,
    categories: list[str] | None = None,
    include_blocked: bool = False,
    evidence_prefix: str = "",
) -> dict:
    """Writes the review queue to `out`: `tasks.json` (Label Studio), `labeling_config.xml`,
    `review.parquet`, `review.csv`, `summary.json` and `evidence/`. Priority: highest `risk`
    first, then `item_id`; blocked items (with `include_blocked`) come in the same order."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    started = time.perf_counter()
    store = ItemStore(db)
    items = store.snapshot(ITEMS)  # one version throughout: what changes meanwhile waits for the next export
    stored = items.schema.names
    policy, _ = store.policy()
    names = [c for c in policy.names if risk_column(c) in stored]
    unknown = set(categories or []) - set(names)
    if unknown:
        raise ReviewError(f"--categories {sorted(unknown)} are not policy categories ({', '.join(names)})")
    review_at = dict(zip(policy.names, policy.review_thresholds.tolist()))
    # Ingested items no signal could score are queued: they are not served, and nobody else sees them.
    decisions = [REVIEW, UNSCORED, BLOCK] if include_blocked else [REVIEW, UNSCORED]

    if "decision" not in stored:
        raise ReviewError(f"{db}: the items table holds no decisions yet: run `shoplens safety rescore --db {db}` first")
    # A table from an earlier version lacks some columns: they are read as null.
    present = [*ITEM_FIELDS, *map(risk_column, names)]

    # The queue's order needs only ids and risks; whole rows are read a chunk at a time.
    keys = items.read(["item_id", "risk", *map(risk_column, names)], decision=decisions, status=OK)
    if categories:
        wanted = np.zeros(keys.num_rows, bool)
        for c in categories:
            wanted |= np.nan_to_num(keys[risk_column(c)].to_numpy(zero_copy_only=False).astype(float), nan=-1) >= review_at[c]
        keys = keys.filter(pa.array(wanted))
    # Unscored items (null risk) first: nothing is known about them.
    unknown = pc.is_null(keys["risk"])
    keys = pa.concat_tables(
        [
            keys.filter(unknown).sort_by([("item_id", "ascending")]),
            keys.filter(pc.invert(unknown)).sort_by([("risk", "descending"), ("item_id", "ascending")]),
        ]
    )
    order = keys["item_id"].to_pylist()[:limit]

    out.mkdir(parents=True, exist_ok=True)
    (out / "evidence").mkdir(exist_ok=True)
    (out / "labeling_config.xml").write_text(labeling_config(policy.names))
    columns = ["priority", *ITEM_FIELDS, *map(risk_column, names), "evidence", "evidence_error"]
    schema = pa.schema(
        [
            (c, pa.int64() if c == "priority" else pa.float64() if c.startswith("risk") or c == "evidence_timestamp_s" else pa.string())
            for c in columns
        ]
    )
    counts = {"queued": len(order), REVIEW: 0, UNSCORED: 0, BLOCK: 0, "evidence_failed": 0}
    versions, errors = set(), []
    with (
        (out / "tasks.json").open("w") as tasks,
        (out / "review.csv").open("w", newline="") as flat_csv,
        pq.ParquetWriter(out / "review.parquet", schema) as flat_parquet,
    ):
        writer = csv.DictWriter(flat_csv, fieldnames=columns)
        writer.writeheader()
        tasks.write("[")
        for start in range(0, len(order), FETCH_ROWS):
            chunk = order[start : start + FETCH_ROWS]
            fetched = items.read(present, item_ids=chunk)
            by_id = {row["item_id"]: dict.fromkeys(ITEM_FIELDS) | row for row in fetched.to_pylist()}
            rows = []
            for priority, item_id in enumerate(chunk, start=start + 1):
                item = by_id[item_id]
                evidence, error = _evidence(item, out / "evidence")
                counts[item["decision"]] += 1
                counts["evidence_failed"] += error is not None
                versions.add((item["model"], item["safety_version"]))
                if error:
                    errors.append({"item_id": item_id, "error": error})
                url = f"{evidence_prefix}{evidence}" if evidence else ""
                entry = task(item, policy.names, policy.review_thresholds.tolist(), url)
                if error:
                    entry["data"]["details"] += f" (evidence unavailable: {error})"
                tasks.write(("\n" if priority == 1 else ",\n") + json.dumps(entry))
                rows.append(
                    {"priority": priority, **{c: item.get(c) for c in columns if c in item}, "evidence": evidence, "evidence_error": error}
                )
            writer.writerows([{c: spreadsheet_safe(v) for c, v in row.items()} for row in rows])
            flat_parquet.write_table(pa.Table.from_pylist(rows, schema=schema))
        tasks.write("\n]\n")
    summary = {
        "command": "review export",
        "db": db,
        "out": str(out),
        **counts,
        "failed": counts["evidence_failed"],
        "errors": errors[:20],
        "include_blocked": include_blocked,
        "categories": categories or names,
        "policy_version": policy.version,
        "scored_with": [{"model": m, "safety_version": v} for m, v in sorted(versions, key=str)],
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "seconds": round(time.perf_counter() - started, 3),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def spreadsheet_safe(value):
    """A CSV cell a spreadsheet shows as text (OWASP, CSV injection): control characters removed,
    then a leading `=`, `+`, `-` or `@` quoted with `'`."""
    if not isinstance(value, str):
        return value
    value = CONTROL_CHARACTERS.sub("", value)
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def _evidence(item: dict, folder: Path) -> tuple[str | None, str | None]:
    """(path under the export folder, error) of the item's evidence JPEG: the product image, or
    the video's worst frame."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", item["item_id"])[:64] + "-" + hashlib.sha256(item["item_id"].encode()).hexdigest()[:8]
    try:
        if not item["media_uri"]:
            raise MediaError("no media stored for this item")
        if item["kind"] == PRODUCT:
            image = load_image(
                read_media(item["media_uri"], ImageLimits().max_bytes, _folder(item["media_uri"])), EVIDENCE_SIDE, name=item["media_uri"]
            )
        else:
            from PIL import Image

            seconds = item["evidence_timestamp_s"] or 0.0
            with local_copy(item["media_uri"], MAX_VIDEO_BYTES, _folder(item["media_uri"])) as (path, _):
                image = Image.fromarray(frame_at(path, seconds))
            name += f"-at-{seconds:.1f}s"
        image.thumbnail((EVIDENCE_SIDE, EVIDENCE_SIDE))
        _draw_matches(image, item)
        image.save(folder / f"{name}.jpg", "JPEG", quality=88)
        return f"evidence/{name}.jpg", None
    except MediaError as e:
        return None, str(e)


def _draw_matches(image, item: dict) -> None:
    """Outlines, on the evidence picture, where the text rules matched text read in it: the
    product's image, or the video's evidence frame."""
    from PIL import ImageDraw

    seconds = item.get("evidence_timestamp_s")
    draw = ImageDraw.Draw(image)
    for match in json.loads(item.get("text_match") or "[]"):
        shown = match["source"] == "image" or (
            match["source"] == "frame" and seconds is not None and abs(match.get("timestamp_s", -1.0) - seconds) < 0.01
        )
        if shown and match.get("box"):
            corners = [(x * image.width, y * image.height) for x, y in zip(match["box"][0::2], match["box"][1::2])]
            draw.polygon(corners, outline=(255, 0, 0), width=3)


def _folder(media_uri: str) -> str | None:
    """What a stored local media path must still lie in when its evidence is read: its own
    folder, link-free as the ingest resolved it (a link swapped in since is not followed)."""
    return None if "://" in media_uri else os.path.dirname(media_uri)


def import_labels(db: str, path: Path) -> dict:
    """Reads reviewers' decisions (a Label Studio JSON export, or a CSV item_id,category,label)
    and upserts them into `labels` in one commit. A malformed file is refused whole; labels of
    items the database does not hold are reported and left out."""
    store = ItemStore(db)
    store.schema(ITEMS)  # no items: nothing to label
    policy, _ = store.policy()
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ReviewFormatError(f"cannot read {path}: {e}") from None
    if path.suffix.lower() == ".json":
        labels = labels_from_label_studio(text, policy.names)
    elif path.suffix.lower() == ".csv":
        labels = labels_from_csv(text, policy.names)
    else:
        raise ReviewFormatError(f"{path}: decisions come as a Label Studio export (.json) or a CSV (.csv)")
    ids = sorted({label.item_id for label in labels})
    known = set(store.read(ITEMS, ["item_id"], item_ids=ids)["item_id"].to_pylist())
    unknown = [i for i in ids if i not in known]
    kept = [label for label in labels if label.item_id in known]
    rows = pa.table(
        {
            "item_id": pa.array([label.item_id for label in kept], pa.string()),
            "category": pa.array([label.category for label in kept], pa.string()),
            "violating": pa.array([label.violating for label in kept], pa.bool_()),
            "reviewer": pa.array([label.reviewer for label in kept], pa.string()),
            "labeled_at": pa.array([label.labeled_at for label in kept], pa.string()),
            "source": pa.array([path.name] * len(kept), pa.string()),
            "imported_at": pa.array([dt.datetime.now(dt.timezone.utc)] * len(kept), pa.timestamp("us", tz="UTC")),
        }
    )
    if rows.num_rows:
        store.upsert_labels(rows)
    return {
        "command": "review import",
        "db": db,
        "file": str(path),
        "labels": rows.num_rows,
        "items": len(known),
        "unknown_items": len(unknown),
        "failed": len(unknown),
        "errors": [{"item_id": i, "error": "no such item in the database"} for i in unknown[:20]],
    }
