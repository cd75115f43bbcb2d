"""The scoring stage: every frame and title through the policy's signals, frames aggregated into
their item, and the policy's decision.

Each signal maps its inputs to probabilities [T, C] over the policy's categories (NaN where it
does not feed a category); a category's risk is the largest any signal gives it. A signal that
fails, or returns a non-finite probability, for an item leaves that item `unscored` with the
reason in `safety_error`: an item is never reported as safe because a signal was missing.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

import numpy as np

from encoders.media import OK, text_or_none
from safety.hashbank import HashBank
from safety.heads import EmbeddingHeads
from safety.pixels import PIXEL_MODELS
from safety.policy import UNSCORED, Policy, PolicyError
from safety.prompts import PromptBank

# Columns the stage adds (besides `risk_<category>`): what the store and the features export read.
ITEM_COLUMNS = ("risk", "decision", "safety_version", "safety_error", "evidence_timestamp_s", "risk_topk_mean",
                "frames_over_review", "hash_match")


class _Signal:
    """A named scorer of vectors or pixels: `fn(inputs) -> [T, K]`, whose K outputs feed
    categories through `feeds` [K, C]."""

    def __init__(self, name: str, inputs: str, fn: Callable[[np.ndarray], np.ndarray], feeds: np.ndarray):
        self.name, self.inputs, self.fn, self.feeds = name, inputs, fn, feeds.astype(bool)

    def scores(self, values: np.ndarray) -> np.ndarray:
        """[T, C]: for each category, the largest output feeding it; NaN where none does."""
        out = np.asarray(self.fn(values), np.float32).reshape(len(values), len(self.feeds))
        fed = np.where(self.feeds[None, :, :], out[:, :, None], np.nan)  # [T, K, C]
        with _all_nan_ok():
            return np.nanmax(fed, axis=1)


class SafetyScorer:
    """Scoring stage. Reads `status`, `frame_vectors` [F, D], `pixels` [F, S, S, 3], `pdq`,
    `pdq_quality`, `timestamp_s` [F], `kind`, `title` and `text_vector`; adds `risk_<category>`,
    the columns in ITEM_COLUMNS, and per frame `frame_risks` [F, C] and `frame_hash_match` [F]."""

    def __init__(
        self, policy: Policy, encode_texts: Callable[[list[str]], np.ndarray], model: str,
        bank: HashBank = HashBank(), num_threads: int | None = None,
    ):
        self.policy, self.bank = policy, bank
        names = policy.names
        identity = np.eye(len(names), dtype=bool)
        prompts = PromptBank(policy, encode_texts, model)
        self.frame_signals = [_Signal("prompt_bank", "vectors", prompts, identity)] if "image" in policy.prompt_bank.fields else []
        self.title_signals = [_Signal("prompt_bank", "vectors", prompts, identity)] if "title" in policy.prompt_bank.fields else []
        if policy.heads is not None:
            heads = EmbeddingHeads.load(policy.heads_path())
            if heads.model != model:
                raise PolicyError(f"the policy's heads were trained on {heads.model} embeddings, not {model}")
            feeds = np.array([[h == c for c in names] for h in heads.categories], bool)
            self.frame_signals.append(_Signal("heads", "vectors", heads, feeds))
        for name, spec in policy.pixel_models.items():
            model_cls = PIXEL_MODELS[name]
            feeds = np.array([[c in spec.outputs.get(output, []) for c in names] for output in model_cls.outputs], bool)
            self.frame_signals.append(_Signal(name, "pixels", model_cls(num_threads), feeds))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n, names = len(batch["status"]), self.policy.names
        ok = np.flatnonzero(batch["status"] == OK)
        failed: dict[int, str] = {}

        # Frames of all ok rows, flat: `owner` says whose each is.
        counts = [len(batch["frame_vectors"][i]) for i in ok]
        owner = np.repeat(ok, counts)
        per_item = {"vectors": [batch["frame_vectors"][i] for i in ok], "pixels": [batch["pixels"][i] for i in ok]}
        frame_risks = self._run(self.frame_signals, per_item, ok, owner, failed)  # [T, C]
        titled = np.array([i for i in ok if text_or_none(batch["title"][i]) is not None], np.int64)
        title_risks = self._run(self.title_signals, {"vectors": [batch["text_vector"][i][None] for i in titled]}, titled, titled, failed)

        hashes = [h for i in ok for h in batch["pdq"][i]]
        qualities = np.concatenate([batch["pdq_quality"][i] for i in ok]) if len(ok) else np.zeros(0, np.int32)
        entry, _ = self.bank.match(hashes, qualities, self.policy.hash_bank)
        for t in np.flatnonzero(entry >= 0):  # a bank match is certain for the entry's category
            category = self.bank.categories[entry[t]]
            if category in names:
                frame_risks[t, names.index(category)] = 1.0
        frame_hash_match = np.array([self.bank.entry_ids[e] if e >= 0 else None for e in entry], dtype=object)

        out = self._aggregate(batch, ok, owner, frame_risks, titled, title_risks, frame_hash_match, failed)
        frame_risks[np.isin(owner, [i for i in ok if out["decision"][i] == UNSCORED])] = np.nan
        per_item_risks = np.empty(n, dtype=object)
        per_item_matches = np.empty(n, dtype=object)
        per_item_risks[:] = [np.zeros((0, len(names)), np.float32)] * n
        per_item_matches[:] = [np.zeros(0, dtype=object)] * n
        splits = np.cumsum(counts)[:-1]
        for i, risks, matches in zip(ok, np.split(frame_risks, splits), np.split(frame_hash_match, splits)):
            per_item_risks[i], per_item_matches[i] = risks, matches
        return {**batch, **out, "frame_risks": per_item_risks, "frame_hash_match": per_item_matches}

    def _run(
        self, signals: list[_Signal], inputs: dict[str, list[np.ndarray]], items: np.ndarray, owner: np.ndarray, failed: dict[int, str]
    ) -> np.ndarray:
        """All `signals` on every item's inputs (`inputs[kind][j]`: the rows of `owner == items[j]`),
        combined by maximum. A signal that fails on the whole batch is retried item by item, so
        one bad item costs only its own score."""
        risks = np.full((len(owner), len(self.policy.names)), np.nan, np.float32)
        for signal in signals:
            values = inputs[signal.inputs]
            if not values:
                continue
            try:
                scores = signal.scores(np.concatenate(values))
            except Exception:
                scores = np.full_like(risks, np.nan)
                for item, mine in zip(items, values):
                    try:
                        scores[owner == item] = signal.scores(np.asarray(mine))
                    except Exception as e:
                        failed.setdefault(int(item), f"safety signal {signal.name} failed: {type(e).__name__}: {e}")
            broken = (~np.isfinite(scores) & signal.feeds.any(axis=0)[None, :]).any(axis=1)
            for item in np.unique(owner[broken]):
                failed.setdefault(int(item), f"safety signal {signal.name} gave a non-finite score")
            risks = np.fmax(risks, scores)
        return risks

    def _aggregate(self, batch, ok, owner, frame_risks, titled, title_risks, frame_hash_match, failed) -> dict[str, np.ndarray]:
        n, names = len(batch["status"]), self.policy.names
        item_risks = np.full((n, len(names)), np.nan, np.float32)
        topk_mean = np.full(n, np.nan, np.float32)
        over_review = np.full(n, -1, np.int32)
        evidence = np.full(n, np.nan, np.float32)
        hash_match = np.full(n, None, dtype=object)
        frame_max = np.nanmax(np.where(np.isnan(frame_risks), -np.inf, frame_risks), axis=1) if len(owner) else np.zeros(0)
        with _all_nan_ok():
            reaching_review = (frame_risks >= self.policy.review_thresholds).any(axis=1)
        for i in ok:
            mine = np.flatnonzero(owner == i)  # never empty: an ok row has frames
            with _all_nan_ok():
                item_risks[i] = np.nanmax(frame_risks[mine], axis=0)
            topk_mean[i] = np.sort(frame_max[mine])[::-1][: self.policy.aggregation.top_k].mean()
            over_review[i] = int(reaching_review[mine].sum())
            if batch["kind"][i] != "product":
                evidence[i] = batch["timestamp_s"][i][np.argmax(frame_max[mine])]
            hash_match[i] = next((m for m in frame_hash_match[mine] if m is not None), None)
        item_risks[titled] = np.fmax(item_risks[titled], title_risks)

        scored = np.zeros(n, bool)
        scored[ok] = True
        for item in failed:
            scored[item] = False
        scored &= np.isfinite(item_risks).all(axis=1)  # every category got a score from some signal
        item_risks[~scored] = np.nan
        decisions = self.policy.decide(item_risks, scored, np.array([m is not None for m in hash_match]) & scored)
        safety_error = np.full(n, None, dtype=object)
        for i in ok[~scored[ok]]:
            safety_error[i] = failed.get(int(i), "no safety signal scored every category")
        with _all_nan_ok():
            risk = np.nanmax(item_risks, axis=1) if len(names) else np.full(n, np.nan)
        return {
            **{f"risk_{c}": item_risks[:, k] for k, c in enumerate(names)},
            "risk": risk.astype(np.float32),
            "decision": decisions,
            "safety_version": np.full(n, self.policy.version, dtype=object),
            "safety_error": safety_error,
            "evidence_timestamp_s": evidence,
            "risk_topk_mean": np.where(scored, topk_mean, np.nan).astype(np.float32),
            "frames_over_review": np.where(scored, over_review, -1).astype(np.int32),
            "hash_match": np.where(scored, hash_match, None),
        }


@contextlib.contextmanager
def _all_nan_ok():
    """Silences numpy's all-NaN-slice warning: a category no signal scored is handled as unscored."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
