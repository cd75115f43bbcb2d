"""The versioned content policy: categories, the signals that feed them, and the thresholds that
turn probabilities into decisions. Scoring (safety/signals) never decides; `Policy.decide` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

ALLOW, REVIEW, BLOCK, UNSCORED = "allow", "review", "block", "unscored"
DEFAULT_POLICY = Path(__file__).parent / "policies" / "default.yaml"
PIXEL_MODEL_NAMES = ("open_nsfw", "image_safety_s")


class PolicyError(ValueError):
    """A policy file that cannot be used (a configuration error: exit code 2)."""


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


class Policy(_Strict):
    version: str = Field(min_length=1)
    description: str = ""
    prompt_bank: PromptBankPolicy
    pixel_models: dict[str, PixelModelPolicy] = {}
    hash_bank: HashBankPolicy = HashBankPolicy()
    heads: str | None = None  # a weights file (safety.heads), relative to the policy file
    aggregation: AggregationPolicy = AggregationPolicy()
    categories: dict[str, CategoryPolicy] = Field(min_length=1)
    source: str | None = None  # where it was loaded from (not part of the file)

    @model_validator(mode="after")
    def _consistent(self):
        for name in self.categories:
            if not name.isidentifier() or name != name.lower():
                raise ValueError(f"category {name!r} must be a lower-case identifier (it names a column risk_{name})")
        for model, spec in self.pixel_models.items():
            if model not in PIXEL_MODEL_NAMES:
                raise ValueError(f"unknown pixel model {model!r}: known are {', '.join(PIXEL_MODEL_NAMES)}")
            unknown = {c for cats in spec.outputs.values() for c in cats} - set(self.categories)
            if unknown:
                raise ValueError(f"pixel model {model!r} feeds unknown categories {sorted(unknown)}")
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

    def decide(self, risks: np.ndarray, scored: np.ndarray, hash_matched: np.ndarray) -> np.ndarray:
        """Decisions for items with category risks [N, C]: `block` when any category reaches its
        block threshold or the item matches the hash bank, `review` when any reaches its review
        threshold, `allow` otherwise; `unscored` for every item not `scored`, whatever its risks."""
        decisions = np.full(len(risks), ALLOW, dtype=object)
        with np.errstate(invalid="ignore"):  # NaN risks of unscored rows compare False
            decisions[(risks >= self.review_thresholds).any(axis=1)] = REVIEW
            decisions[(risks >= self.block_thresholds).any(axis=1) | hash_matched] = BLOCK
        decisions[~scored] = UNSCORED
        return decisions


def load_policy(path: str | Path | None = None) -> Policy:
    """The policy at `path` (YAML), or the default one shipped with the package."""
    import yaml

    path = Path(path) if path else DEFAULT_POLICY
    try:
        document = yaml.safe_load(path.read_text())
        return Policy(**document, source=str(path))
    except (OSError, yaml.YAMLError) as e:
        raise PolicyError(f"cannot read policy {path}: {e}") from None
    except (TypeError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        raise PolicyError(f"invalid policy {path}: {e}") from None
