"""`shoplens safety rescore`: stored items decided again by the database's current policy, without
decoding or embedding anything again."""

from __future__ import annotations

import time

import numpy as np

from shoplens.encoders.rows import OK, PRODUCT
from shoplens.pipelines.ingest.writer import PendingWrites
from shoplens.pipelines.store.database import ItemStore, StoreError
from shoplens.pipelines.store.schemas import FRAMES, ITEMS, frames_schema
from shoplens.safety.heads import load_policy_and_heads

FETCH_ROWS = 1024


def rescore(db: str, pretrained: str | None = None, device: str = "auto", policy_path=None) -> dict:
    """Decides every stored item again with the database's current policy, or the one at
    `policy_path` (which becomes the database's): embedding signals from the stored vectors,
    pixel models' stored outputs, PDQ hashes against the current bank. Nothing is decoded or
    embedded again."""
    from shoplens.encoders.clip import query_encoder
    from shoplens.safety.scorer import SafetyScorer

    started = time.perf_counter()
    # A policy file given is read (and a bad one refused, exit 2) before the database is opened.
    given = load_policy_and_heads(policy_path) if policy_path is not None else None
    store = ItemStore(db)
    policy, heads = given or store.policy()
    model = store.model()
    if model is None:
        raise StoreError(f"{db}: the table holds no embedded item yet: nothing to rescore")
    encoder = query_encoder(model, pretrained, device)  # the table's own model, checked
    if heads is not None:
        heads.check_fits(encoder.provenance, encoder.dim)
    if policy_path is not None:
        store.remember_policy(policy, heads)
    table, frames = store.items(encoder.dim, policy.names), store.frames(encoder.dim, policy.names)
    scorer = SafetyScorer(policy, encoder.encode_texts, encoder.provenance, store.hash_bank(), heads=heads, stored_pixel_scores=True)
    pending = PendingWrites(store, table, frames, FETCH_ROWS, policy.names)
    counts: dict[str, int] = {}
    for batch in store.scan(ITEMS, batch_rows=FETCH_ROWS):
        items = batch.to_pylist()
        videos = [r["item_id"] for r in items if r["kind"] != PRODUCT and r["status"] == OK]
        stored_frames: dict[str, list[dict]] = {}
        for f in store.read(FRAMES, frames_schema(encoder.dim, []).names, item_ids=videos).to_pylist():
            stored_frames.setdefault(f["item_id"], []).append(f)
        scored = scorer(_stored_batch(items, stored_frames, encoder.dim, policy))
        for decision in scored["decision"]:
            counts[decision] = counts.get(decision, 0) + 1
        pending.add(scored)
        pending.flush()
    return {
        "command": "safety rescore",
        "db": db,
        "policy_version": policy.version,
        "items": sum(counts.values()),
        "decisions": counts,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _stored_batch(items: list[dict], frames: dict[str, list[dict]], dim: int, policy) -> dict[str, np.ndarray]:
    """Stored rows in the shape the scoring stage reads after embedding (and OCR): a product is
    its one frame; a video, its stored frames in order. An item the policy's OCR would read but
    that was stored unread (OCR off or failed then) has an `ocr_error`."""
    n = len(items)
    out = {
        key: np.empty(n, dtype=object)
        for key in ("frame_vectors", "frame_signal_scores", "pdq", "pdq_quality", "timestamp_s", "frame_index", "frame_ocr_lines")
    }
    out["ocr_error"] = np.full(n, None, dtype=object)
    for i, item in enumerate(items):
        if item["kind"] == PRODUCT or item["status"] != OK:
            mine = (
                [
                    {
                        "vector": item["vector"],
                        "signal_scores": item["signal_scores"],
                        "pdq": item["pdq"],
                        "pdq_quality": item["pdq_quality"],
                        "timestamp_s": 0.0,
                        "frame_index": 0,
                        "ocr_lines": item["ocr_lines"],
                    }
                ]
                if item["status"] == OK
                else []
            )
        else:
            mine = sorted(frames.get(item["item_id"], []), key=lambda f: f["frame_index"])
        out["frame_vectors"][i] = np.array([f["vector"] for f in mine], np.float32).reshape(-1, dim)
        out["frame_signal_scores"][i] = [f["signal_scores"] for f in mine]
        out["pdq"][i] = [f["pdq"] for f in mine]
        out["pdq_quality"][i] = np.array([-1 if f["pdq_quality"] is None else f["pdq_quality"] for f in mine], np.int32)
        out["timestamp_s"][i] = np.array([f["timestamp_s"] for f in mine], np.float32)
        out["frame_index"][i] = np.array([f["frame_index"] for f in mine], np.int64)
        read = item["ocr_model"] is not None and item["status"] == OK
        out["frame_ocr_lines"][i] = [_confident(f["ocr_lines"], policy.ocr.min_confidence) for f in mine] if read else None
        if not read and item["status"] == OK and policy.ocr.reads(item["kind"]):
            out["ocr_error"][i] = "OCR did not read this item when it was ingested: re-ingest it to score it"
    columns = {name: np.array([item[name] for item in items], dtype=object) for name in items[0]} if items else {}
    for name in ("vector", "text_vector"):
        columns[name] = np.array([np.zeros(dim, np.float32) if item[name] is None else item[name] for item in items], np.float32).reshape(
            n, dim
        )
    return columns | out


def _confident(lines: list[dict] | None, min_confidence: float) -> list[dict]:
    """The stored lines the policy's OCR would keep now: a raised `min_confidence` applies at once."""
    return [line for line in lines or [] if line["confidence"] >= min_confidence]
