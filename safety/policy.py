"""The versioned content policy: categories, the signals that feed them, and the thresholds that
turn probabilities into decisions. Scoring (safety/signals) never decides; `Policy.decide` does.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shoplens.encoders.errors import UsageError
from shoplens.encoders.rows import ALLOW, BLOCK, KINDS, PRODUCT, RESERVED_CATEGORIES, REVIEW, UNSCORED, risk_column

DEFAULT_POLICY = Path(__file__).parent / "policies" / "default.yaml"
PIXEL_MODEL_NAMES = ("open_nsfw", "image_safety_s")
PROMPT_FIELDS = ("image", "title", "ocr")


class PolicyError(UsageError):
    """A policy file that cannot be used."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TextRulesPolicy(_Strict):
    """What a category looks for in written text (safety.text_rules)."""

    terms: list[str] = []  # whole words, matched after folding case, width, accents and look-alikes
    patterns: list[str] = []  # RE2 expressions, case-insensitive
    detectors: list[Literal["phone_number", "email", "url", "messaging_handle"]] = []
    score: float = Field(default=0.9, gt=0, le=1)  # the category's probability when a rule matches

    @model_validator(mode="after")
    def _compiled(self):
        from shoplens.safety.text_rules import compile_pattern, terms_pattern

        if not (self.terms or self.patterns or self.detectors):
            raise ValueError("text_rules need terms, patterns or detectors")
        if any(not t.strip() for t in self.terms):
            raise ValueError("text_rules.terms must not be blank")
        for pattern in self.patterns:
            compile_pattern(pattern)
        if self.terms:
            compile_pattern(terms_pattern(self.terms))
        return self


class TextDetectorsPolicy(_Strict):
    phone_regions: list[str] = ["US"]  # where numbers written without +country are read from
    allowed_domains: list[str] = []  # hosts (and their subdomains) that are not off-platform

    @model_validator(mode="after")
    def _known_regions(self):
        import phonenumbers

        unknown = [r for r in self.phone_regions if r not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"unknown phone regions {unknown}: use ISO 3166 codes such as US, GB, DE")
        return self


class OcrPolicy(_Strict):
    """Reading text in pictures (encoders.ocr): where, at what size, how sure."""

    enabled: bool = False
    media: list[Literal["images", "frames"]] = Field(default=["images", "frames"], min_length=1)
    max_side: int = Field(default=640, ge=32, le=1920)  # pixels of the picture's long side as read (each row ships its frames at it)
    min_confidence: float = Field(default=0.5, ge=0, le=1)
    # A video frame within this PDQ distance of the frame read before it repeats its text: not read again.
    repeat_distance: int = Field(default=10, ge=0, le=256)

    def reads(self, kind: str) -> bool:
        return self.enabled and ("images" if kind == PRODUCT else "frames") in self.media

    def read_sides(self) -> dict[str, int]:
        """Kind -> the long side its pictures are read at, for the kinds OCR reads (encoders.decode)."""
        return {kind: self.max_side for kind in KINDS if self.reads(kind)}

    def provenances(self) -> dict[str, str]:
        """Kind -> what reads its text, for the kinds OCR reads (stored as `ocr_model`)."""
        from shoplens.encoders.ocr import ocr_provenance

        return {kind: ocr_provenance(self.max_side, self.min_confidence, self.repeat_distance) for kind in self.read_sides()}


class CategoryPolicy(_Strict):
    review: float = Field(ge=0, le=1)
    block: float = Field(ge=0, le=1)
    prompts: list[str] = []
    text_rules: TextRulesPolicy | None = None

    @model_validator(mode="after")
    def _ordered(self):
        if self.review > self.block:
            raise ValueError(f"review threshold {self.review} is above block threshold {self.block}")
        return self


class PromptBankPolicy(_Strict):
    logit_scale: float = Field(gt=0)
    fields: list[str] = ["image", "title"]  # and `ocr`: the text read in the pictures
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
    ocr: OcrPolicy = OcrPolicy()
    text_detectors: TextDetectorsPolicy = TextDetectorsPolicy()
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
        if set(self.prompt_bank.fields) - set(PROMPT_FIELDS):
            raise ValueError(f"prompt_bank.fields are some of {', '.join(PROMPT_FIELDS)}, not {self.prompt_bank.fields}")
        fed = {c for spec in self.pixel_models.values() for cats in spec.outputs.values() for c in cats}
        unfed = [name for name, c in self.categories.items() if not c.prompts and c.text_rules is None and name not in fed]
        if unfed:
            raise ValueError(f"categories {unfed} have no prompts, text_rules or pixel model: nothing could score them")
        if "ocr" in self.prompt_bank.fields and not self.ocr.enabled:
            raise ValueError("prompt_bank.fields has ocr, but ocr is not enabled")
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

    @property
    def prompted(self) -> list[str]:
        """The categories that have prompts, in the policy's order."""
        return [name for name, c in self.categories.items() if c.prompts]

    @property
    def uses_ocr(self) -> bool:
        """Whether a decision may depend on what OCR reads: then an item OCR failed on is unscored."""
        return self.ocr.enabled and ("ocr" in self.prompt_bank.fields or any(c.text_rules for c in self.categories.values()))

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
