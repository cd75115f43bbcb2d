"""`shoplens safety calibrate`: a new policy version fitted to the reviewers' labels."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np

from shoplens.encoders.rows import OK, risk_column
from shoplens.pipelines.moderation.review_queue import ReviewError
from shoplens.pipelines.store.database import ItemStore
from shoplens.pipelines.store.schemas import ITEMS, LABELS
from shoplens.safety.fitting import (
    MIN_VIOLATING_FOR_HEAD,
    Figures,
    category_signals,
    fit_calibration,
    held_out,
    threshold_for_precision,
    too_few,
)
from shoplens.safety.heads import train_heads


def calibrate(db: str, target_precision: float = 0.9, review_precision: float = 0.5) -> dict:
    """Per category with enough labels: trains an embedding head on the labelled items' vectors,
    fits a calibrated combination of the category's signals, and picks the block threshold
    reaching `target_precision` (and the review threshold reaching `review_precision`) with the
    best recall, all on ~70% of the labelled items; reports precision, recall and ROC-AUC
    before and after on the other 30%. Stores the result as a new policy version."""
    if not 0 < review_precision <= target_precision <= 1:
        raise ReviewError("need 0 < --review-precision <= --target-precision <= 1")
    store = ItemStore(db)
    if not store.has(ITEMS) or store.count(LABELS) == 0:
        raise ReviewError(f"{db}: no labels; import reviewers' decisions with `shoplens review import` first")
    policy, _ = store.policy()
    labelled = store.read(LABELS, ["item_id", "category", "violating"]).to_pylist()
    ids = sorted({row["item_id"] for row in labelled})
    columns = ["item_id", "model", "vector", "signal_scores", *map(risk_column, policy.names)]
    fetched = (dict.fromkeys(columns) | r for r in store.read(ITEMS, columns, item_ids=ids, status=OK).to_pylist())
    rows = {r["item_id"]: r for r in fetched if r["vector"] is not None and r["signal_scores"]}
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
        stored = np.array([np.nan if rows[ids[i]][risk_column(category)] is None else rows[ids[i]][risk_column(category)] for i in where])
        old = policy.categories[category]
        report[category] = {
            "labels": len(y),
            "violating": int(y.sum()),
            "held_out": int((~train).sum()),
            "review": round(review, 6),
            "block": round(block, 6),
            "before": vars(Figures.of(np.nan_to_num(stored[~train], nan=-1.0), y[~train], old.review)),
            "after": vars(Figures.of(calibrated[~train], y[~train], review)),
            "after_block": vars(Figures.of(calibrated[~train], y[~train], block)),
        }
        categories[category] = old.model_copy(update={"review": review, "block": block})
        calibration[category] = fit
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    new = policy.model_copy(
        update={
            "version": f"{policy.version.split('+cal.')[0]}+cal.{stamp}",
            "parent": policy.version,
            "categories": categories,
            "calibration": calibration,
            "heads": None,
            "source": None,
        }
    )
    summary = {
        "command": "safety calibrate",
        "db": db,
        "policy_version": new.version,
        "parent": policy.version,
        "target_precision": target_precision,
        "review_precision": review_precision,
        "categories": report,
        "skipped": skipped,
    }
    store.save_policy(new, heads, summary)
    return summary
