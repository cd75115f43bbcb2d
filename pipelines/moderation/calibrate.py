"""`shoplens safety calibrate` and `shoplens safety rescore`: a new policy version fitted to the
reviewers' labels, and stored items decided again by the current policy without re-embedding."""

from __future__ import annotations

import datetime as dt
import json
import time

import numpy as np

from shoplens.pipelines.moderation.review_queue import ReviewError
from shoplens.pipelines.store.database import ITEMS, LABELS, ItemStore, PendingWrites
from shoplens.safety.fitting import (
    MIN_VIOLATING_FOR_HEAD, Figures, category_signals, fit_calibration, held_out, threshold_for_precision, too_few,
)
from shoplens.safety.heads import train_heads

FETCH_ROWS = 1024


def calibrate(db: str, target_precision: float = 0.9, review_precision: float = 0.5) -> dict:
    """Per category with enough labels: trains an embedding head on the labelled items' vectors,
    fits a calibrated combination of the category's signals, and picks the block threshold
    reaching `target_precision` (and the review threshold reaching `review_precision`) with the
    best recall, all on ~70% of the labelled items; reports precision, recall and ROC-AUC
    before and after on the other 30%. Stores the result as a new policy version."""
    from lancedb.expr import col

    if not 0 < review_precision <= target_precision <= 1:
        raise ReviewError("need 0 < --review-precision <= --target-precision <= 1")
    store = ItemStore(db)
    items, labels = store.existing(ITEMS), store.existing(LABELS)
    if items is None or labels is None or labels.count_rows() == 0:
        raise ReviewError(f"{db}: no labels; import reviewers' decisions with `shoplens review import` first")
    policy, _ = store.policy()
    labelled = labels.to_arrow().to_pylist()
    ids = sorted({row["item_id"] for row in labelled})
    columns = ["item_id", "status", "model", "vector", "signal_scores", *(f"risk_{c}" for c in policy.names)]
    rows = {}
    for start in range(0, len(ids), FETCH_ROWS):
        fetched = items.search().where(col("item_id").isin(ids[start : start + FETCH_ROWS])).select(columns).limit(None).to_list()
        rows |= {r["item_id"]: r for r in fetched if r["status"] == "ok" and r["vector"] is not None and r["signal_scores"]}
    ids = sorted(rows)
    models = {rows[i]["model"] for i in ids}
    if len(models) > 1:
        raise ReviewError(f"the labelled items were embedded with several models {sorted(models)}: re-ingest with one first")
    index = {item_id: n for n, item_id in enumerate(ids)}
    vectors = np.array([rows[i]["vector"] for i in ids], np.float64)
    scores = [json.loads(rows[i]["signal_scores"]) for i in ids]
    test = held_out(ids)

    usable, skipped = {}, {}
    for category in policy.names:
        mine = [(index[r["item_id"]], r["violating"]) for r in labelled if r["category"] == category and r["item_id"] in index]
        where, y = np.array([m for m, _ in mine], np.int64), np.array([v for _, v in mine], np.int64)
        train = ~test[where]
        reason = too_few(y) or (too_few(y[train]) and f"too few in the training share: {too_few(y[train])}")
        if reason:
            skipped[category] = reason
        else:
            usable[category] = (where, y)
    if not usable:
        raise ReviewError("too few labels to calibrate: " + "; ".join(f"{c}: {r}" for c, r in skipped.items()))

    learnable = {c: (w[~test[w]], y[~test[w]]) for c, (w, y) in usable.items() if y[~test[w]].sum() >= MIN_VIOLATING_FOR_HEAD}
    heads = train_heads(vectors, learnable, model=models.pop()) if learnable else None
    head_scores = heads(vectors) if heads else None
    categories, calibration, report = dict(policy.categories), dict(policy.calibration), {}
    for category, (where, y) in usable.items():
        signals = {name: values for name, values in category_signals(policy, category, [scores[i] for i in where]).items()}
        if category in learnable:
            signals["heads"] = head_scores[where, list(learnable).index(category)].astype(np.float64)
        train = ~test[where]
        fit = fit_calibration({name: v[train] for name, v in signals.items()}, y[train])
        calibrated = fit.apply(signals, len(y))
        block = threshold_for_precision(calibrated[train], y[train], target_precision)
        review = min(threshold_for_precision(calibrated[train], y[train], review_precision), block)
        stored = np.array([np.nan if rows[ids[i]][f"risk_{category}"] is None else rows[ids[i]][f"risk_{category}"] for i in where])
        old = policy.categories[category]
        report[category] = {
            "labels": len(y), "violating": int(y.sum()), "held_out": int((~train).sum()),
            "review": round(review, 6), "block": round(block, 6),
            "before": vars(Figures.of(np.nan_to_num(stored[~train], nan=-1.0), y[~train], old.review)),
            "after": vars(Figures.of(calibrated[~train], y[~train], review)),
            "after_block": vars(Figures.of(calibrated[~train], y[~train], block)),
        }
        categories[category] = old.model_copy(update={"review": review, "block": block})
        calibration[category] = fit
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    new = policy.model_copy(update={
        "version": f"{policy.version.split('+cal.')[0]}+cal.{stamp}", "parent": policy.version, "categories": categories,
        "calibration": calibration, "heads": None, "source": None,
    })
    summary = {"command": "safety calibrate", "db": db, "policy_version": new.version, "parent": policy.version,
               "target_precision": target_precision, "review_precision": review_precision,
               "categories": report, "skipped": skipped}
    store.save_policy(new, heads, summary)
    return summary


def rescore(db: str, pretrained: str | None = None, device: str = "auto", policy_path=None) -> dict:
    """Decides every stored item again with the database's current policy, or the one at
    `policy_path` (which becomes the database's): embedding signals from the stored vectors,
    pixel models' stored outputs, PDQ hashes against the current bank. Nothing is decoded or
    embedded again."""
    from lancedb.expr import col

    from shoplens.pipelines.search.searcher import Searcher
    from shoplens.safety.scorer import SafetyScorer

    started = time.perf_counter()
    store = ItemStore(db)
    policy, heads = store.policy(policy_path)
    searcher = Searcher(db, pretrained=pretrained, device=device)  # the table's own model, checked
    encoder = searcher.encoder
    if heads is not None:
        heads.check_fits(encoder.provenance, encoder.dim)
    if policy_path is not None:
        store.remember_policy(policy, heads)
    table, frames = store.items(encoder.dim, policy.names), store.frames(encoder.dim, policy.names)
    scorer = SafetyScorer(policy, encoder.encode_texts, encoder.provenance, store.hash_bank(), heads=heads,
                          stored_pixel_scores=True)
    pending = PendingWrites(store, table, frames, FETCH_ROWS, policy.names)
    counts: dict[str, int] = {}
    for batch in table.to_lance().to_batches(batch_size=FETCH_ROWS):
        items = batch.to_pylist()
        videos = [r["item_id"] for r in items if r["kind"] != "product" and r["status"] == "ok"]
        stored_frames: dict[str, list[dict]] = {}
        if videos:
            for f in frames.search().where(col("item_id").isin(videos)).limit(None).to_list():
                stored_frames.setdefault(f["item_id"], []).append(f)
        scored = scorer(_stored_batch(items, stored_frames, encoder.dim))
        for decision in scored["decision"]:
            counts[decision] = counts.get(decision, 0) + 1
        pending.add(scored)
        pending.flush()
    return {"command": "safety rescore", "db": db, "policy_version": policy.version, "items": sum(counts.values()),
            "decisions": counts, "seconds": round(time.perf_counter() - started, 3)}


def _stored_batch(items: list[dict], frames: dict[str, list[dict]], dim: int) -> dict[str, np.ndarray]:
    """Stored rows in the shape the scoring stage reads after embedding: a product is its one
    frame; a video, its stored frames in order."""
    n = len(items)
    out = {key: np.empty(n, dtype=object) for key in ("frame_vectors", "frame_signal_scores", "pdq", "pdq_quality",
                                                      "timestamp_s", "frame_index")}
    for i, item in enumerate(items):
        if item["kind"] == "product" or item["status"] != "ok":
            mine = [{"vector": item["vector"], "signal_scores": item["signal_scores"], "pdq": item["pdq"],
                     "pdq_quality": item["pdq_quality"], "timestamp_s": 0.0, "frame_index": 0}] if item["status"] == "ok" else []
        else:
            mine = sorted(frames.get(item["item_id"], []), key=lambda f: f["frame_index"])
        out["frame_vectors"][i] = np.array([f["vector"] for f in mine], np.float32).reshape(-1, dim)
        out["frame_signal_scores"][i] = [f["signal_scores"] for f in mine]
        out["pdq"][i] = [f["pdq"] for f in mine]
        out["pdq_quality"][i] = np.array([-1 if f["pdq_quality"] is None else f["pdq_quality"] for f in mine], np.int32)
        out["timestamp_s"][i] = np.array([f["timestamp_s"] for f in mine], np.float32)
        out["frame_index"][i] = np.array([f["frame_index"] for f in mine], np.int64)
    columns = {name: np.array([item[name] for item in items], dtype=object) for name in items[0]} if items else {}
    for name in ("vector", "text_vector"):
        columns[name] = np.array([np.zeros(dim, np.float32) if item[name] is None else item[name] for item in items], np.float32).reshape(n, dim)
    return columns | out
