"""The scoring stage: every frame and title through the policy's signals, the signals fused into
category risks, frames aggregated into their item, and the policy's decision.

Each signal maps its inputs to raw outputs (a pixel model's `nsfw`, a prompt bank's categories),
which feed the policy's categories; the policy fuses the signals of a category (the largest, or
a calibrated combination). A signal that fails, or returns a non-finite probability, for an item
leaves that item `unscored` with the reason in `safety_error`: an item is never reported as safe
because a signal was missing.

Raw outputs are kept (`signal_scores`, per item and per frame) so that `shoplens safety rescore`
can apply a new policy without the pixels: embedding signals are recomputed from the stored
embeddings, pixel models' outputs are read back, text rules run again on the stored text.

Text (safety.text_rules, and prompt banks with `fields: [ocr]`) comes from the title, an item-level
signal spread over its frames, and from what OCR read in each frame (`frame_ocr_lines`). An item OCR
failed on is `unscored` when the policy's decisions use OCR. `text_match` says what matched where.
"""

from __future__ import annotations

import contextlib
import json
import unicodedata
import warnings
from collections.abc import Callable
from dataclasses import asdict

import numpy as np

from shoplens.encoders.media import text_or_none
from shoplens.encoders.ocr import frame_text, frames_read, item_text
from shoplens.encoders.rows import OK, PRODUCT, UNSCORED, risk_column
from shoplens.safety.hashbank import HashBank
from shoplens.safety.heads import EmbeddingHeads, policy_heads
from shoplens.safety.pixels import PIXEL_MODELS
from shoplens.safety.policy import Policy, PolicyError
from shoplens.safety.prompts import PromptBank
from shoplens.safety.text_rules import RuleMatch, TextRules

TITLE_SIGNAL = "title_prompt_bank"
OCR_PROMPT_SIGNAL = "ocr_prompt_bank"
TITLE_RULES_SIGNAL = "title_text_rules"
OCR_RULES_SIGNAL = "ocr_text_rules"
# What scoring adds besides `risk_<category>`: per item, and per frame ([F] or [F, C] per row).
ITEM_SCORE_COLUMNS = (
    "risk",
    "decision",
    "safety_version",
    "safety_error",
    "evidence_timestamp_s",
    "risk_topk_mean",
    "frames_over_review",
    "hash_match",
    "signal_scores",
    "text_match",
)
FRAME_SCORE_COLUMNS = ("frame_signal_scores", "frame_risks", "frame_hash_match")


class _Signal:
    """A named scorer: `fn(inputs) -> [T, K]` raw outputs named `outputs`, which feed the
    policy's categories through `feeds` [K, C]. `inputs` says what it reads: `vectors`, `pixels`,
    or `stored` (its own outputs kept from an earlier run)."""

    def __init__(self, name: str, inputs: str, fn: Callable[[np.ndarray], np.ndarray] | None, outputs, feeds: np.ndarray):
        self.name, self.inputs, self.fn, self.outputs, self.feeds = name, inputs, fn, tuple(outputs), feeds.astype(bool)

    def raw(self, values: np.ndarray) -> np.ndarray:
        out = np.asarray(values if self.fn is None else self.fn(values), np.float32)
        return out.reshape(len(values), len(self.outputs))

    def by_category(self, raw: np.ndarray) -> np.ndarray:
        """[T, C]: for each category, the largest output feeding it; NaN where none does."""
        fed = np.where(self.feeds[None, :, :], raw[:, :, None], np.nan)  # [T, K, C]
        with _all_nan_ok():
            return np.nanmax(fed, axis=1)


class SafetyScorer:
    """Scoring stage. Reads `status`, `kind`, `title`, `text_vector`, and per frame
    `frame_vectors` [F, D], `pixels` [F, S, S, 3] (or, with `stored_pixel_scores`,
    `frame_signal_scores`: the raw outputs an earlier run kept), `pdq`, `pdq_quality`,
    `timestamp_s`, and where OCR ran `frame_ocr_lines` and `ocr_error`. Adds `risk_<category>`, `risk`, `decision`, `safety_version`, `safety_error`,
    `evidence_timestamp_s`, `risk_topk_mean`, `frames_over_review`, `hash_match`,
    `signal_scores`, `text_match`, and per frame `frame_risks` [F, C], `frame_hash_match`, `frame_signal_scores`."""

    def __init__(
        self,
        policy: Policy,
        encode_texts: Callable[[list[str]], np.ndarray],
        model: str,
        bank: HashBank = HashBank(),
        num_threads: int | None = None,
        heads: EmbeddingHeads | None = None,
        stored_pixel_scores: bool = False,
        device: str = "cpu",
    ):
        self.policy, self.bank = policy, bank
        names = policy.names
        frame_inputs = ("frame_signal_scores",) if stored_pixel_scores else ("pixels",)
        self.reads = ("status", "kind", "title", "text_vector", "frame_vectors", *frame_inputs, "pdq", "pdq_quality", "timestamp_s")
        if policy.ocr.enabled:
            self.reads += ("frame_ocr_lines", "ocr_error")
        self.adds = (*map(risk_column, names), *ITEM_SCORE_COLUMNS, *(c for c in FRAME_SCORE_COLUMNS if c not in frame_inputs))
        self.drops = ()
        self.encode_texts = encode_texts
        # Item-level signals (the title's, the OCR text's) count for each of the item's frames.
        self.frame_signals, self.item_signals = [], []
        fields = set(policy.prompt_bank.fields)
        if policy.prompted and fields:
            prompts = PromptBank(policy, encode_texts, model)
            feeds = _feeds(prompts.categories, names)
            if "image" in fields:
                self.frame_signals.append(_Signal("prompt_bank", "vectors", prompts, prompts.categories, feeds))
            if "title" in fields:
                self.item_signals.append(_Signal(TITLE_SIGNAL, "title_vector", prompts, prompts.categories, feeds))
            if "ocr" in fields:
                self.item_signals.append(_Signal(OCR_PROMPT_SIGNAL, "ocr_vector", prompts, prompts.categories, feeds))
        self.rules = TextRules(policy)
        if self.rules.categories:
            feeds = _feeds(self.rules.categories, names)
            self.item_signals.append(_Signal(TITLE_RULES_SIGNAL, "title", self._rule_scores, self.rules.categories, feeds))
            if policy.ocr.enabled:
                self.frame_signals.append(_Signal(OCR_RULES_SIGNAL, "ocr_text", self._rule_scores, self.rules.categories, feeds))
        self._matches: dict[str, list[RuleMatch]] = {}
        heads = heads if heads is not None else policy_heads(policy)  # as the store or the file gave them
        if heads is not None:
            if heads.model != model:
                raise PolicyError(f"the policy's heads were trained on {heads.model} embeddings, not {model}")
            feeds = np.array([[h == c for c in names] for h in heads.categories], bool)
            self.frame_signals.append(_Signal("heads", "vectors", heads, heads.categories, feeds))
        for name, spec in policy.pixel_models.items():
            outputs = PIXEL_MODELS[name].outputs
            feeds = np.array([[c in spec.outputs.get(output, []) for c in names] for output in outputs], bool)
            if stored_pixel_scores:
                self.frame_signals.append(_Signal(name, "stored", None, outputs, feeds))
            else:
                self.frame_signals.append(_Signal(name, "pixels", PIXEL_MODELS[name](num_threads, device), outputs, feeds))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n, names = len(batch["status"]), self.policy.names
        ok = np.flatnonzero(batch["status"] == OK)
        failed: dict[int, str] = {}
        self._matches = {}

        # Frames of all ok rows, flat: `owner` says whose each is.
        counts = [len(batch["frame_vectors"][i]) for i in ok]
        owner = np.repeat(ok, counts)
        read = self._ocr_read(batch, ok, dict(zip(ok.tolist(), counts)), failed)
        raw = {s.name: self._raw(s, *self._frame_inputs(s, batch, ok, read), owner, failed) for s in self.frame_signals}
        per_signal = {s.name: s.by_category(raw[s.name]) for s in self.frame_signals}
        item_raw = {}
        for signal in self.item_signals:  # an item's title (or OCR text) counts for each of its frames
            items, values = self._item_inputs(signal, batch, ok, read)
            item_raw[signal.name] = (items, self._raw(signal, items, values, items, failed))
            by_item = dict(zip(items.tolist(), signal.by_category(item_raw[signal.name][1])))
            per_frame = np.full((len(owner), len(names)), np.nan, np.float32)
            for t, item in enumerate(owner.tolist()):
                per_frame[t] = by_item.get(item, np.nan)
            per_signal[signal.name] = per_frame
        frame_risks = self.policy.fuse(per_signal, len(owner))

        hashes = [h for i in ok for h in batch["pdq"][i]]
        qualities = np.concatenate([np.asarray(batch["pdq_quality"][i]) for i in ok]) if len(ok) else np.zeros(0, np.int32)
        entry, _ = self.bank.match(hashes, qualities, self.policy.hash_bank)
        for t in np.flatnonzero(entry >= 0):  # a bank match is certain for the entry's category
            category = self.bank.categories[entry[t]]
            if category in names:
                frame_risks[t, names.index(category)] = 1.0
        frame_hash_match = np.array([self.bank.entry_ids[e] if e >= 0 else None for e in entry], dtype=object)

        out = self._aggregate(batch, ok, owner, frame_risks, frame_hash_match, failed)
        frame_risks[np.isin(owner, [i for i in ok if out["decision"][i] == UNSCORED])] = np.nan
        frame_scores = [self._scores_json(raw, t) for t in range(len(owner))]
        per_item = {key: _objects(n) for key in ("frame_risks", "frame_hash_match", "frame_signal_scores", "signal_scores", "text_match")}
        starts = np.concatenate([[0], np.cumsum(counts)])
        item_row = {name: {item: j for j, item in enumerate(items.tolist())} for name, (items, _) in item_raw.items()}
        for k, i in enumerate(ok):
            mine = slice(starts[k], starts[k + 1])
            per_item["frame_risks"][i] = frame_risks[mine]
            per_item["frame_hash_match"][i] = frame_hash_match[mine]
            per_item["frame_signal_scores"][i] = frame_scores[mine]
            # An item without frames (a stored video whose frames are gone) has no frame outputs.
            scores = {name: values[mine].max(axis=0, keepdims=True) for name, values in raw.items() if starts[k + 1] > starts[k]}
            scores |= {name: values[item_row[name][i]][None] for name, (_, values) in item_raw.items() if i in item_row[name]}
            per_item["signal_scores"][i] = self._scores_json(scores, 0)
            per_item["text_match"][i] = self._text_match(batch, i, read.get(int(i)))
        return {**batch, **out, **per_item}

    def _ocr_read(self, batch, ok: np.ndarray, counts: dict[int, int], failed: dict[int, str]) -> dict[int, list]:
        """The OCR lines of each frame of every ok item OCR read; an item it failed on (or whose
        lines do not match its frames) fails when the policy's decisions use OCR."""
        if not self.policy.ocr.enabled or "frame_ocr_lines" not in batch:
            return {}
        read = {}
        for i in ok.tolist():
            error, lines = text_or_none(batch["ocr_error"][i]), frames_read(batch["frame_ocr_lines"][i])
            if error is None and lines is not None and len(lines) != counts[i]:
                error = f"OCR read {len(lines)} frames of {counts[i]}"
            if error is not None and self.policy.uses_ocr:
                failed.setdefault(i, str(error))
            elif lines is not None and error is None:
                read[i] = lines
        return read

    def _frame_inputs(self, signal: _Signal, batch, ok: np.ndarray, read: dict[int, list]) -> tuple[np.ndarray, list]:
        """(the items `signal` scores, their values [F, ...] each) for a frame signal."""
        if signal.inputs == "stored":
            return ok, _stored(signal, batch, ok)
        if signal.inputs == "ocr_text":
            items = np.array(sorted(read), np.int64)
            return items, [np.array([frame_text(lines) for lines in read[i]], dtype=object) for i in items.tolist()]
        column = {"vectors": "frame_vectors", "pixels": "pixels"}[signal.inputs]
        return ok, [batch[column][i] for i in ok]

    def _item_inputs(self, signal: _Signal, batch, ok: np.ndarray, read: dict[int, list]) -> tuple[np.ndarray, list]:
        """(the items `signal` scores, their values [1, ...] each) for an item-level signal."""
        if signal.inputs == "title":  # every item: no title is text in which no rule matches
            return ok, [np.array([text_or_none(batch["title"][i]) or ""], dtype=object) for i in ok]
        if signal.inputs == "title_vector":
            titled = np.array([i for i in ok if text_or_none(batch["title"][i]) is not None], np.int64)
            return titled, [np.asarray(batch["text_vector"][i], np.float32)[None] for i in titled]
        texts = {i: item_text(read[i]) for i in sorted(read)}
        items = np.array([i for i, text in texts.items() if text], np.int64)
        return items, self._encoded([texts[i] for i in items.tolist()])

    def _encoded(self, texts: list[str]) -> list:
        """Each text's embedding [1, D], or the exception encoding it raised."""
        if not texts:
            return []
        try:
            return list(np.asarray(self.encode_texts(texts), np.float32)[:, None])
        except Exception:
            out = []
            for text in texts:
                try:
                    out.append(np.asarray(self.encode_texts([text]), np.float32))
                except Exception as e:
                    out.append(RuntimeError(f"{type(e).__name__}: {e}"))
            return out

    def _rule_scores(self, texts: np.ndarray) -> np.ndarray:
        """[T, K]: each text-rule category's probability for each text."""
        return np.array([self.rules.probabilities(self._rule_matches(str(t))) for t in texts], np.float32).reshape(len(texts), -1)

    def _rule_matches(self, text: str) -> list[RuleMatch]:
        if text not in self._matches:
            self._matches[text] = self.rules.match(text)
        return self._matches[text]

    def _text_match(self, batch, i: int, read: list | None) -> str | None:
        """JSON: what the text rules matched in item `i`, and where (title, image, or frame at t s)."""
        if not self.rules.categories:
            return None
        found = [{**asdict(m), "source": "title"} for m in self._rule_matches(text_or_none(batch["title"][i]) or "")]
        seen = {(m["category"], m["rule"], m["text"]) for m in found}
        for lines, seconds in zip(read or [], batch["timestamp_s"][i]):
            for m in self._rule_matches(frame_text(lines)):
                if (m.category, m.rule, m.text) in seen:
                    continue
                seen.add((m.category, m.rule, m.text))
                where = {"source": "image"} if batch["kind"][i] == PRODUCT else {"source": "frame", "timestamp_s": round(float(seconds), 3)}
                box = next(
                    (line["box"] for line in lines if m.text in line["text"] or m.text in unicodedata.normalize("NFKC", line["text"])), None
                )
                found.append({**asdict(m), **where, "box": box})
        return json.dumps(found, ensure_ascii=False)

    def _raw(self, signal: _Signal, items: np.ndarray, values: list, owner: np.ndarray, failed: dict[int, str]) -> np.ndarray:
        """`signal`'s raw outputs [T, K] for every row of `owner` (NaN where it failed or does not
        apply): `values` are `items`' inputs. It runs on all of them at once; when that fails,
        item by item, so one bad item costs only its own score."""
        out = np.full((len(owner), len(signal.outputs)), np.nan, np.float32)
        usable = []
        for item, value in zip(items, values):
            if isinstance(value, Exception):
                failed.setdefault(int(item), f"safety signal {signal.name} failed: {value}")
            else:
                usable.append((item, value))
        rows = np.isin(owner, [item for item, _ in usable])
        try:
            if usable:
                out[rows] = signal.raw(np.concatenate([value for _, value in usable]))
        except Exception:
            for item, value in usable:
                try:
                    out[owner == item] = signal.raw(np.asarray(value))
                except Exception as e:
                    failed.setdefault(int(item), f"safety signal {signal.name} failed: {type(e).__name__}: {e}")
        for item in np.unique(owner[rows & ~np.isfinite(out).all(axis=1)]):
            failed.setdefault(int(item), f"safety signal {signal.name} gave no finite score")
        return out

    def _scores_json(self, raw: dict[str, np.ndarray], row: int) -> str:
        outputs = {s.name: s.outputs for s in self.frame_signals + self.item_signals}
        return json.dumps(
            {
                name: {o: (None if not np.isfinite(v) else round(float(v), 6)) for o, v in zip(outputs[name], values[row])}
                for name, values in raw.items()
            }
        )

    def _aggregate(self, batch, ok, owner, frame_risks, frame_hash_match, failed) -> dict[str, np.ndarray]:
        n, names = len(batch["status"]), self.policy.names
        item_risks = np.full((n, len(names)), np.nan, np.float32)
        topk_mean = np.full(n, np.nan, np.float32)
        over_review = np.full(n, -1, np.int32)
        evidence = np.full(n, np.nan, np.float32)
        hash_match = np.full(n, None, dtype=object)
        with _all_nan_ok():
            frame_max = np.nanmax(np.where(np.isnan(frame_risks), -np.inf, frame_risks), axis=1) if len(owner) else np.zeros(0)
            reaching_review = (frame_risks >= self.policy.review_thresholds).any(axis=1)
        for i in ok:
            mine = np.flatnonzero(owner == i)
            if len(mine) == 0:  # decoding always gives frames; stored rows may have lost theirs
                failed.setdefault(int(i), "no frames to score")
                continue
            with _all_nan_ok():
                item_risks[i] = np.nanmax(frame_risks[mine], axis=0)
            topk_mean[i] = np.sort(frame_max[mine])[::-1][: self.policy.aggregation.top_k].mean()
            over_review[i] = int(reaching_review[mine].sum())
            if batch["kind"][i] != PRODUCT:
                evidence[i] = batch["timestamp_s"][i][np.argmax(frame_max[mine])]
            hash_match[i] = next((m for m in frame_hash_match[mine] if m is not None), None)

        scored = np.zeros(n, bool)
        scored[ok] = True
        for item in failed:
            scored[item] = False
        scored &= np.isfinite(item_risks).all(axis=1)  # every category got a score from some signal
        item_risks[~scored] = np.nan
        # A bank match blocks whatever else failed: a known-violating item is never `unscored`.
        decisions = self.policy.decide(item_risks, scored, np.array([m is not None for m in hash_match], bool))
        safety_error = np.full(n, None, dtype=object)
        for i in ok[~scored[ok]]:
            safety_error[i] = failed.get(int(i), "no safety signal scored every category")
        with _all_nan_ok():
            risk = np.nanmax(item_risks, axis=1) if len(names) else np.full(n, np.nan)
        return {
            **{risk_column(c): item_risks[:, k] for k, c in enumerate(names)},
            "risk": risk.astype(np.float32),
            "decision": decisions,
            "safety_version": np.full(n, self.policy.version, dtype=object),
            "safety_error": safety_error,
            "evidence_timestamp_s": evidence,
            "risk_topk_mean": np.where(scored, topk_mean, np.nan).astype(np.float32),
            "frames_over_review": np.where(scored, over_review, -1).astype(np.int32),
            "hash_match": hash_match,
        }


def _feeds(outputs: list[str], categories: list[str]) -> np.ndarray:
    """[K, C]: output k feeds the category of its own name."""
    return np.array([[o == c for c in categories] for o in outputs], bool).reshape(len(outputs), len(categories))


def _stored(signal: _Signal, batch, items: np.ndarray) -> list:
    """A pixel model's outputs per item, [F, K], as an earlier run kept them in
    `frame_signal_scores`; an error for an item it never ran on."""
    values = []
    for i in items:
        frames = [json.loads(s) if isinstance(s, str) else {} for s in batch["frame_signal_scores"][i]]
        if all(signal.name in f for f in frames):
            values.append(np.array([[f[signal.name].get(o, np.nan) for o in signal.outputs] for f in frames], np.float64))
        else:
            values.append(ValueError(f"pixel model {signal.name} did not run when this item was ingested: re-ingest it to score it"))
    return values


def _objects(n: int) -> np.ndarray:
    out = np.empty(n, dtype=object)
    out[:] = [None] * n
    return out


@contextlib.contextmanager
def _all_nan_ok():
    """Silences numpy's all-NaN-slice warning: a category no signal scored is handled as unscored."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
