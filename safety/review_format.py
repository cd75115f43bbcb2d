"""Review formats: the queue as Label Studio tasks (and the labeling config they match), and
reviewers' decisions read back from a Label Studio export or a CSV, checked before anything is
written.

A reviewer marks the categories an item violates, or `none`; every policy category then gets a
label for that item: violating for those marked, not violating for the rest.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from shoplens.encoders.errors import UsageError

NONE_CHOICE = "none"
FROM_NAME, TO_NAME = "violations", "evidence"  # the labeling config's control and object names
CSV_COLUMNS = ("item_id", "category", "label")
TRUE_LABELS, FALSE_LABELS = {"1", "true", "yes", "violating"}, {"0", "false", "no", "ok", "not_violating"}


class ReviewFormatError(UsageError):
    """A decisions file that cannot be imported; nothing of it is written."""


@dataclass(frozen=True)
class Label:
    item_id: str
    category: str
    violating: bool
    reviewer: str | None
    labeled_at: str | None  # ISO 8601, as the file gave it


def labeling_config(categories: list[str]) -> str:
    """Label Studio's labeling config for the exported tasks: the evidence image, the item's
    details, and one choice per policy category plus `none`."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in [*categories, NONE_CHOICE])
    return f"""<View>
  <Header value="$title"/>
  <Image name="{TO_NAME}" value="$image"/>
  <Text name="details" value="$details"/>
  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="multiple" showInline="true">
{choices}
  </Choices>
</View>
"""


def task(item: dict, categories: list[str], review_thresholds: list[float], evidence_url: str) -> dict:
    """One Label Studio task for a queued item: its evidence and scores in `data` (with
    `item_id` as the stable key decisions are joined on), and the model's guess as a prediction:
    every category at or over its review threshold."""
    scores = {c: item.get(f"risk_{c}") for c in categories}
    flagged = [c for c, t in zip(categories, review_thresholds) if scores[c] is not None and scores[c] >= t]
    when = f" at {item['evidence_timestamp_s']:.1f} s" if item.get("evidence_timestamp_s") is not None else ""
    matches = json.loads(item.get("text_match") or "[]")
    text = "".join(f"; {m['category']}: {m['rule']} {m['text']!r} in {_where(m)}" for m in matches)
    details = "; ".join(f"{c} {s:.3f}" for c, s in scores.items() if s is not None) + when + text
    version = f"{item['model']} | policy {item['safety_version']}"
    return {
        "data": {
            "item_id": item["item_id"],
            "image": evidence_url,
            "title": item.get("title") or item["item_id"],
            "details": details,
            "kind": item["kind"],
            "category": item.get("category"),
            "seller_id": item.get("seller_id"),
            "decision": item["decision"],
            "risk": item["risk"],
            "scores": scores,
            "hash_match": item.get("hash_match"),
            "evidence_timestamp_s": item.get("evidence_timestamp_s"),
            "model": item["model"],
            "safety_version": item["safety_version"],
            "ocr_text": item.get("ocr_text"),
            "text_match": matches,
        },
        "predictions": [
            {
                "model_version": version,
                "score": item["risk"],
                "result": [
                    {
                        "id": f"{item['item_id']}-prediction",
                        "type": "choices",
                        "from_name": FROM_NAME,
                        "to_name": TO_NAME,
                        "value": {"choices": flagged or [NONE_CHOICE]},
                    }
                ],
            }
        ],
    }


def _where(match: dict) -> str:
    return f"frame at {match['timestamp_s']:.1f} s" if match["source"] == "frame" else match["source"]


def labels_from_label_studio(text: str, categories: list[str]) -> list[Label]:
    """Labels from a Label Studio JSON export: each task's latest non-cancelled annotation. Any
    part of the wrong shape is a ReviewFormatError naming the task."""
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReviewFormatError(f"not valid JSON: {e}") from None
    except RecursionError:
        raise ReviewFormatError("not a Label Studio export: JSON nested too deeply") from None
    if not isinstance(tasks, list):
        raise ReviewFormatError("a Label Studio export is a JSON list of tasks")
    labels = []
    for n, entry in enumerate(tasks):
        where = f"task {n}"
        if not isinstance(entry, dict) or not isinstance(entry.get("data"), dict) or not isinstance(entry["data"].get("item_id"), str):
            raise ReviewFormatError(f"{where}: no data.item_id (was it exported by `shoplens review export`?)")
        item_id = entry["data"]["item_id"]
        where = f"{where} ({item_id})"
        annotations = _list(entry.get("annotations"), f"{where}: annotations")
        for a in annotations:
            if not isinstance(a, dict):
                raise ReviewFormatError(f"{where}: an annotation is {type(a).__name__}, not an object")
            if not isinstance(a.get("was_cancelled", False), (bool, type(None))):
                raise ReviewFormatError(f"{where}: was_cancelled is {a['was_cancelled']!r}, not true or false")
        annotations = [a for a in annotations if not a.get("was_cancelled")]
        if not annotations:
            continue  # not reviewed yet
        latest = max(annotations, key=lambda a: _when(a, where))
        chosen = _choices(latest, where)
        if not chosen:
            continue  # an annotation that chose nothing is no decision
        unknown = chosen - set(categories) - {NONE_CHOICE}
        if unknown:
            raise ReviewFormatError(f"{where}: unknown categories {sorted(unknown)}")
        if NONE_CHOICE in chosen and len(chosen) > 1:
            raise ReviewFormatError(f"{where}: `none` chosen together with {sorted(chosen - {NONE_CHOICE})}")
        reviewer = _reviewer(latest.get("completed_by"), where)
        at = latest.get("updated_at") or latest.get("created_at")
        labels += [Label(item_id, c, c in chosen, reviewer, at) for c in categories]
    return _unique(labels)


def _when(annotation: dict, where: str) -> dt.datetime:
    """When an annotation was last made (`updated_at`, else `created_at`), as a UTC time (a time
    without a zone is UTC); the earliest possible time when it says none."""
    text = annotation.get("updated_at") or annotation.get("created_at")
    if text is None:
        return dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if isinstance(text, str) else None
    except ValueError:
        when = None
    if when is None:
        raise ReviewFormatError(f"{where}: updated_at/created_at {text!r} is not an ISO 8601 time")
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def _reviewer(who, where: str) -> str | None:
    """Label Studio's `completed_by`: a user id, or a user object with `email` or `id`."""
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    if who is None or isinstance(who, (str, int)) and not isinstance(who, bool):
        return None if who is None else str(who)
    raise ReviewFormatError(f"{where}: completed_by {who!r} is not a user id or email")


def _list(value, what: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ReviewFormatError(f"{what} is {type(value).__name__}, not a list")
    return value


def _choices(annotation: dict, where: str) -> set[str]:
    """The choices an annotation made in the `violations` control."""
    chosen = set()
    for region in _list(annotation.get("result"), f"{where}: result"):
        if not isinstance(region, dict):
            raise ReviewFormatError(f"{where}: a result region is {type(region).__name__}, not an object")
        if region.get("from_name") != FROM_NAME or region.get("type") != "choices":
            continue
        value = region.get("value")
        if not isinstance(value, dict):
            raise ReviewFormatError(f"{where}: a choices region's value is {type(value).__name__}, not an object")
        choices = _list(value.get("choices"), f"{where}: value.choices")
        bad = [c for c in choices if not isinstance(c, str)]
        if bad:
            raise ReviewFormatError(f"{where}: a choice is {bad[0]!r}, not a category name")
        chosen |= set(choices)
    return chosen


def labels_from_csv(text: str, categories: list[str]) -> list[Label]:
    """Labels from a CSV with exactly the columns item_id,category,label (label: 1/0, true/false,
    yes/no, violating/ok)."""
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
        raise ReviewFormatError(f"a decisions CSV has exactly the columns {','.join(CSV_COLUMNS)}, not {','.join(reader.fieldnames or [])}")
    labels = []
    for line, row in enumerate(reader, start=2):
        item_id, category, value = (row[c] for c in CSV_COLUMNS)
        if not item_id or None in (category, value):
            raise ReviewFormatError(f"line {line}: an item_id, a category and a label are needed")
        if category not in categories:
            raise ReviewFormatError(f"line {line}: unknown category {category!r} (the policy has {', '.join(categories)})")
        value = value.strip().lower()
        if value not in TRUE_LABELS | FALSE_LABELS:
            raise ReviewFormatError(f"line {line}: label {row['label']!r} is none of {sorted(TRUE_LABELS | FALSE_LABELS)}")
        labels.append(Label(item_id, category, value in TRUE_LABELS, None, None))
    return _unique(labels)


def _unique(labels: list[Label]) -> list[Label]:
    seen = set()
    for label in labels:
        key = (label.item_id, label.category)
        if key in seen:
            raise ReviewFormatError(f"item {label.item_id!r} is labelled twice for {label.category!r}")
        seen.add(key)
    return labels
