"""Fitting a policy to reviewers' labels: per category, a calibrated combination of its signals,
review and block thresholds at target precisions, and the figures on held-out labels."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from shoplens.safety.heads import fit_logistic
from shoplens.safety.policy import CategoryCalibration, logit

MIN_LABELS = 30  # per category, to fit and to hold some out
MIN_NOT_VIOLATING = 5  # the false positives a threshold is set against
MIN_VIOLATING_FOR_HEAD = 5  # fewer, and a head learns nothing: the category is calibrated on its other signals
HELD_OUT_SHARE = 0.3


def held_out(item_ids: list[str]) -> np.ndarray:
    """Which items are held out for evaluation: a stable ~30% by a hash of the id, so repeated
    calibrations on a growing label set keep their test items."""
    return np.array([int(hashlib.sha256(i.encode()).hexdigest()[:8], 16) / 2**32 < HELD_OUT_SHARE for i in item_ids], bool)


def too_few(y: np.ndarray) -> str | None:
    """Why a category's labels cannot be calibrated on, or None. Few or no violating labels are
    enough: reviewers who found none among the flagged items say the flags were wrong."""
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    if len(y) < MIN_LABELS or negatives < MIN_NOT_VIOLATING:
        return (
            f"{len(y)} labels ({positives} violating, {negatives} not); at least {MIN_LABELS} are needed, "
            f"{MIN_NOT_VIOLATING} of them not violating"
        )
    return None


def fit_calibration(signals: dict[str, np.ndarray], y: np.ndarray, l2: float = 1e-2) -> CategoryCalibration:
    """Logistic regression of the labels on the logits of the category's signal scores [N] each
    (NaN: the signal did not score the item, which adds nothing), with Platt's smoothed targets
    so that a separable set does not give infinite weights."""
    names = list(signals)
    x = np.stack([np.nan_to_num(logit(signals[n]), nan=0.0) for n in names], axis=1) if names else np.zeros((len(y), 0))
    positives, negatives = y.sum(), len(y) - y.sum()
    targets = np.where(y == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    weights, bias = fit_logistic(x, targets, l2)
    return CategoryCalibration(bias=float(bias), weights={n: float(w) for n, w in zip(names, weights)})


def threshold_for_precision(scores: np.ndarray, y: np.ndarray, precision: float) -> float:
    """The threshold with the best recall whose precision (items at or over it that are
    violating) reaches `precision`: the score of the lowest violating item at which it still
    does. 1.0 when no threshold does."""
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(y[order])
    flagged = np.searchsorted(-ranked, -ranked, side="right")  # items at or over each score, ties included
    reaching = (hits[flagged - 1] / flagged >= precision) & (y[order] == 1)
    return float(ranked[np.flatnonzero(reaching)[-1]]) if reaching.any() else 1.0


@dataclass
class Figures:
    precision: float | None
    recall: float | None
    roc_auc: float | None

    @classmethod
    def of(cls, scores: np.ndarray, y: np.ndarray, threshold: float) -> Figures:
        flagged = scores >= threshold
        tp = int((flagged & (y == 1)).sum())
        return cls(
            precision=round(tp / flagged.sum(), 4) if flagged.any() else None,
            recall=round(tp / y.sum(), 4) if y.sum() else None,
            roc_auc=roc_auc(scores, y),
        )


def roc_auc(scores: np.ndarray, y: np.ndarray) -> float | None:
    """The probability that a violating item scores above a non-violating one (ties count half)."""
    positives, negatives = scores[y == 1], scores[y == 0]
    if len(positives) == 0 or len(negatives) == 0:
        return None
    above = (positives[:, None] > negatives[None, :]).sum() + 0.5 * (positives[:, None] == negatives[None, :]).sum()
    return round(float(above / (len(positives) * len(negatives))), 4)


def category_signals(policy, category: str, signal_scores: list[dict]) -> dict[str, np.ndarray]:
    """Each signal's item-level score for `category` (the largest of its outputs that feed it;
    NaN where it did not score the item), read from stored `signal_scores`, as the scorer
    computes them. Old heads are left out: calibration trains new ones."""
    feeds = {name: [category] for name in ("prompt_bank", "title_prompt_bank", "ocr_prompt_bank", "title_text_rules", "ocr_text_rules")}
    feeds |= {name: [o for o, cats in spec.outputs.items() if category in cats] for name, spec in policy.pixel_models.items()}
    out = {}
    for name, outputs in feeds.items():
        if outputs:
            values = [
                max((s.get(name, {}).get(o) for o in outputs if s.get(name, {}).get(o) is not None), default=np.nan) for s in signal_scores
            ]
            if not np.isnan(values).all():
                out[name] = np.array(values, np.float64)
    return out
