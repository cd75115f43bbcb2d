"""The versioned content policy: categories, the signals that feed them, and the thresholds that
turn probabilities into decisions. Scoring (safety/signals) never decides; `Policy.decide` does.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shoplens.encoders.errors import UsageError
from shoplens.encoders.rows import ALLOW, BLOCK, RESERVED_CATEGORIES, REVIEW, UNSCORED, risk_column

DEFAULT_POLICY = Path(__file__).parent / "policies" / "default.yaml"
PIXEL_MODEL_NAMES = ("open_nsfw", "image_safety_s")


class PolicyError(UsageError):
    """A policy file that cannot be used."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CategoryPolicy(_Strict):
    review: float = Field(ge=0, le=1)
    block: float = Field(ge=0, le=1)
    prompts: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _ordered(self):
        if self.review > self.block:
            raise ValueError(f"review threshold {self.review} is above block threshold {self.block}")
        return self


class PromptBankPolicy(_Strict):
    logit_scale: float = Field(gt=0)
    fields: list[str] = ["image", "title"]
    benign: list[str] = Field(min_length=1)


class PixelModelPolicy(_Strict):
    outputs: dict[str, list[str]]  # model output -> categories it feeds


class HashBankPolicy(_Strict):
    max_distance: int = Field(default=31, ge=0, le=256)
    min_quality: int = Field(default=50, ge=0, le=100)


class AggregationPolicy(_Strict):
    top_k: int = Field(default=3, ge=1)


class CategoryCalibration(_Strict):
    """A fitted combination of a category's signals: sigmoid(bias + sum of weight * logit(score))
    (`shoplens safety calibrate`); a signal absent for an item adds nothing."""

    bias: float
    weights: dict[str, float]  # signal name -> weight of its logit

    def apply(self, signals: dict[str, np.ndarray], rows: int) -> np.ndarray:
        """Calibrated probabilities [rows] from each signal's scores [rows] for this category."""
        z = np.full(rows, self.bias)
        for signal, weight in self.weights.items():
            if signal in signals:
                z += weight * np.nan_to_num(logit(signals[signal]), nan=0.0)
        return sigmoid(z)


class Policy(_Strict):
    version: str = Field(min_length=1)
    description: str = ""
    prompt_bank: PromptBankPolicy
    pixel_models: dict[str, PixelModelPolicy] = {}
    hash_bank: HashBankPolicy = HashBankPolicy()
    heads: str | None = None  # a weights file (safety.heads), relative to the policy file
    aggregation: AggregationPolicy = AggregationPolicy()
    categories: dict[str, CategoryPolicy] = Field(min_length=1)
    calibration: dict[str, CategoryCalibration] = {}
    parent: str | None = None  # the version this one was calibrated from
    source: str | None = None  # where it was loaded from (not part of the file)

    @model_validator(mode="after")
    def _consistent(self):
        for name in self.categories:
            if not name.isidentifier() or name != name.lower():
                raise ValueError(f"category {name!r} must be a lower-case identifier (it names a column {risk_column(name)})")
            if name in RESERVED_CATEGORIES:
                raise ValueError(f"category {name!r} is reserved: its column {risk_column(name)} is another column of the items table")
        for model, spec in self.pixel_models.items():
            if model not in PIXEL_MODEL_NAMES:
                raise ValueError(f"unknown pixel model {model!r}: known are {', '.join(PIXEL_MODEL_NAMES)}")
            unknown = {c for cats in spec.outputs.values() for c in cats} - set(self.categories)
            if unknown:
                raise ValueError(f"pixel model {model!r} feeds unknown categories {sorted(unknown)}")
        if set(self.calibration) - set(self.categories):
            raise ValueError(f"calibration for unknown categories {sorted(set(self.calibration) - set(self.categories))}")
        if set(self.prompt_bank.fields) - {"image", "title"}:
            raise ValueError(f"prompt_bank.fields are image and/or title, not {self.prompt_bank.fields}")
        return self

    @property
    def names(self) -> list[str]:
        return list(self.categories)

    @property
    def review_thresholds(self) -> np.ndarray:
        return np.array([c.review for c in self.categories.values()], np.float32)

    @property
    def block_thresholds(self) -> np.ndarray:
        return np.array([c.block for c in self.categories.values()], np.float32)

    def heads_path(self) -> Path | None:
        if self.heads is None:
            return None
        path = Path(self.heads)
        return path if path.is_absolute() or self.source is None else Path(self.source).parent / path

    def fuse(self, per_signal: dict[str, np.ndarray], rows: int) -> np.ndarray:
        """Category risks [T, C] from each signal's [T, C] scores (NaN where a signal does not
        feed a category): the largest, or the category's calibrated combination."""
        stacked = np.stack(list(per_signal.values())) if per_signal else np.full((1, rows, len(self.categories)), np.nan)
        with warnings.catch_warnings(), np.errstate(invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN category stays NaN: unscored
            risks = np.nanmax(stacked, axis=0).astype(np.float32)
        for k, name in enumerate(self.categories):
            if name in self.calibration:
                risks[:, k] = self.calibration[name].apply({s: scores[:, k] for s, scores in per_signal.items()}, rows)
        return risks

    def decide(self, risks: np.ndarray, scored: np.ndarray, hash_matched: np.ndarray) -> np.ndarray:
        """Decisions for items with category risks [N, C]: `block` when any category reaches its
        block threshold or the item matches the hash bank, `review` when any reaches its review
        threshold, `allow` otherwise; `unscored` for every item not `scored`, whatever its risks,
        unless it matches the hash bank: a known-violating item is blocked whatever else failed."""
        decisions = np.full(len(risks), ALLOW, dtype=object)
        with np.errstate(invalid="ignore"):  # NaN risks of unscored rows compare False
            decisions[(risks >= self.review_thresholds).any(axis=1)] = REVIEW
            decisions[(risks >= self.block_thresholds).any(axis=1)] = BLOCK
        decisions[~scored] = UNSCORED
        decisions[np.asarray(hash_matched, bool)] = BLOCK
        return decisions


def logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, np.float64)))


def policy_yaml(policy: Policy) -> str:
    import yaml

    return yaml.safe_dump(policy.model_dump(exclude={"source"}), sort_keys=False, allow_unicode=True)


def parse_policy(text: str, source: str) -> Policy:
    import yaml

    try:
        return Policy(**yaml.safe_load(text), source=source)
    except yaml.YAMLError as e:
        raise PolicyError(f"cannot read policy {source}: {e}") from None
    except (TypeError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        raise PolicyError(f"invalid policy {source}: {e}") from None


def load_policy(path: str | Path | None = None) -> Policy:
    """The policy at `path` (YAML), or the default one shipped with the package."""
    path = Path(path) if path else DEFAULT_POLICY
    try:
        text = path.read_text()
    except OSError as e:
        raise PolicyError(f"cannot read policy {path}: {e}") from None
    return parse_policy(text, str(path))
