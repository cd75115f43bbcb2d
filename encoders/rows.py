"""The row contract every room shares: the words a row's `status`, `kind` and `decision` hold,
and how a category's risk column is named. It lives in the bottom room so that every room can
import it (doors point pipelines → safety → encoders).

A row travels as a dict of arrays through stages; each stage declares the columns it `reads`,
`adds` and `drops`, and a test runs the ingest chain against those declarations."""

from __future__ import annotations

# `status`: what became of an item.
OK, ERROR = "ok", "error"
SKIPPED = "skipped"  # unchanged since the last run: not decoded, not written (never stored)
STATUSES = (OK, ERROR)

# `kind`: what an item is.
PRODUCT, VIDEO, LIVE = "product", "video", "live"
KINDS = (PRODUCT, VIDEO, LIVE)
VIDEO_KINDS = (VIDEO, LIVE)  # sampled into frames

# `decision`: what the policy made of an item. `unscored` is never `allow`: no signal could score it.
ALLOW, REVIEW, BLOCK, UNSCORED = "allow", "review", "block", "unscored"
DECISIONS = (ALLOW, REVIEW, BLOCK, UNSCORED)

RISK_PREFIX = "risk_"
# Risk-named columns that are not a category's: a category of one of these names would collide.
AGGREGATE_RISK_COLUMNS = ("risk_topk_mean",)
RESERVED_CATEGORIES = tuple(name.removeprefix(RISK_PREFIX) for name in AGGREGATE_RISK_COLUMNS)


def risk_column(category: str) -> str:
    """The column holding a category's risk."""
    return f"{RISK_PREFIX}{category}"


def is_category_risk(column: str) -> bool:
    """Whether `column` holds one category's risk (not `risk` itself, not an aggregate)."""
    return column.startswith(RISK_PREFIX) and column not in AGGREGATE_RISK_COLUMNS


def category_of(column: str) -> str:
    """The category whose risk `column` holds."""
    return column.removeprefix(RISK_PREFIX)
