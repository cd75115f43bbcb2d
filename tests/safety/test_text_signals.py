"""Text as a safety signal in the scoring stage: text rules on titles and on what OCR read in each
frame, prompt banks on OCR text, and an OCR failure as an unscored item, never an allowed one."""

import json

import numpy as np
import pytest
import yaml

from shoplens.encoders.rows import ALLOW, BLOCK, ERROR, OK, REVIEW, UNSCORED
from shoplens.safety.policy import load_policy
from shoplens.safety.scorer import SafetyScorer

PROMPTS = {"a product": 0, "a gun": 1, "a gun for sale": 1}  # the read text lands on the prompt


def text_policy(tmp_path, fields=("image",), ocr=True, contact_rules=True):
    categories = {"weapons": {"review": 0.4, "block": 0.95, "prompts": ["a gun"]}}
    if contact_rules:
        categories["off_platform_contact"] = {
            "review": 0.5,
            "block": 0.95,
            "text_rules": {"detectors": ["phone_number", "email", "url", "messaging_handle"], "score": 0.9},
        }
    (tmp_path / "policy.yaml").write_text(
        yaml.safe_dump(
            {
                "version": "text-1",
                "prompt_bank": {"logit_scale": 100.0, "fields": list(fields), "benign": ["a product"]},
                "ocr": {"enabled": ocr},
                "categories": categories,
            }
        )
    )
    return load_policy(tmp_path / "policy.yaml")


def encode(texts):
    """Hand-made text embeddings: each known prompt its own axis, anything else the benign one's."""
    return np.eye(3, dtype=np.float32)[[PROMPTS.get(t, 0) for t in texts]]


def line(text: str, box=(0.1, 0.1, 0.5, 0.1, 0.5, 0.2, 0.1, 0.2)) -> dict:
    return {"text": text, "confidence": 0.99, "box": list(box)}


def batch(items: list[dict]) -> dict:
    """Items given as {kind, title, frames: [lines of each frame], ocr_error}; every frame benign."""

    def column(values):
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out

    frames = [len(item["frames"]) for item in items]
    return {
        "status": column([item.get("status", OK) for item in items]),
        "kind": column([item.get("kind", "product") for item in items]),
        "title": column([item.get("title") for item in items]),
        "frame_vectors": column([np.tile(np.eye(3, dtype=np.float32)[0], (f, 1)) for f in frames]),
        "text_vector": np.tile(np.eye(3, dtype=np.float32)[0], (len(items), 1)),
        "pdq": column([column([None] * f) for f in frames]),
        "pdq_quality": column([np.full(f, -1) for f in frames]),
        "timestamp_s": column([np.arange(f, dtype=np.float32) * 2 for f in frames]),
        "frame_ocr_lines": column([item.get("read", item["frames"]) for item in items]),
        "ocr_error": column([item.get("ocr_error") for item in items]),
    }


def test_a_phone_number_in_a_picture_is_a_review_saying_what_and_where_and_the_same_picture_without_it_is_allowed(tmp_path):
    scorer = SafetyScorer(text_policy(tmp_path), encode, "hand-made")
    out = scorer(batch([{"frames": [[line("BIG SALE"), line("Call +1 415-555-2671")]]}, {"frames": [[line("BIG SALE")]]}]))
    assert list(out["decision"]) == [REVIEW, ALLOW]
    assert out["risk_off_platform_contact"][0] == pytest.approx(0.9) and out["risk_off_platform_contact"][1] == 0.0
    [match] = json.loads(out["text_match"][0])
    assert match == {
        "category": "off_platform_contact",
        "rule": "phone_number",
        "text": "+1 415-555-2671",
        "source": "image",
        "box": line("").get("box"),
    }
    assert json.loads(out["text_match"][1]) == []
    assert json.loads(out["signal_scores"][0])["ocr_text_rules"] == {"off_platform_contact": 0.9}


def test_a_title_match_says_title_and_a_video_frame_match_says_when(tmp_path):
    scorer = SafetyScorer(text_policy(tmp_path), encode, "hand-made")
    video = {"kind": "video", "frames": [[], [line("BIG SALE")], [line("telegram @cheapdeals")], [line("telegram @cheapdeals")]]}
    out = scorer(batch([{"title": "mail me: seller@example.org", "frames": [[]]}, video]))
    assert [(m["source"], m["text"]) for m in json.loads(out["text_match"][0])] == [("title", "seller@example.org")]
    [match] = json.loads(out["text_match"][1])  # the same text in two frames: reported once, where it first appears
    assert (match["source"], match["timestamp_s"], match["rule"]) == ("frame", 4.0, "messaging_handle")
    assert out["evidence_timestamp_s"][1] == 4.0 and out["frames_over_review"][1] == 2
    assert list(out["decision"]) == [REVIEW, REVIEW]


def test_an_item_ocr_failed_on_is_unscored_when_the_policy_reads_text_and_the_batch_goes_on(tmp_path):
    items = [{"frames": [[]], "read": None, "ocr_error": "OCR failed: RuntimeError: boom"}, {"frames": [[line("SALE")]]}]
    out = SafetyScorer(text_policy(tmp_path), encode, "hand-made")(batch(items))
    assert list(out["decision"]) == [UNSCORED, ALLOW] and out["safety_error"][0] == "OCR failed: RuntimeError: boom"
    assert np.isnan(out["risk"][0])
    # A policy whose decisions read no text (OCR on, but no rule and no prompt bank on it) scores it.
    quiet = SafetyScorer(text_policy(tmp_path, contact_rules=False), encode, "hand-made")(batch(items))
    assert list(quiet["decision"]) == [ALLOW, ALLOW]


def test_ocr_lines_that_do_not_match_the_frames_are_a_failure_not_a_silent_pass(tmp_path):
    out = SafetyScorer(text_policy(tmp_path), encode, "hand-made")(batch([{"frames": [[], []], "read": [[]]}]))
    assert out["decision"][0] == UNSCORED and out["safety_error"][0] == "OCR read 1 frames of 2"


def test_text_rules_run_on_every_item_without_ocr_or_title_and_score_it_zero(tmp_path):
    out = SafetyScorer(text_policy(tmp_path, ocr=False), encode, "hand-made")(batch([{"frames": [[line("+1 415 555 2671")]]}]))
    assert out["decision"][0] == ALLOW and out["risk_off_platform_contact"][0] == 0.0  # OCR off: picture text unread
    assert "ocr_text_rules" not in json.loads(out["signal_scores"][0])


def test_the_prompt_bank_scores_the_text_read_in_the_pictures(tmp_path):
    scorer = SafetyScorer(text_policy(tmp_path, fields=("image", "ocr")), encode, "hand-made")
    out = scorer(batch([{"frames": [[line("a gun for sale")]]}, {"frames": [[line("fresh apples")]]}, {"frames": [[]]}]))
    assert out["risk_weapons"][0] == pytest.approx(1.0, abs=1e-6) and out["risk_weapons"][1] < 1e-6
    assert set(json.loads(out["signal_scores"][0])) == {"prompt_bank", "ocr_prompt_bank", "title_text_rules", "ocr_text_rules"}
    assert "ocr_prompt_bank" not in json.loads(out["signal_scores"][2])  # nothing read: no text to score
    assert list(out["decision"]) == [BLOCK, ALLOW, ALLOW]


def test_an_item_that_failed_to_ingest_has_no_text_match(tmp_path):
    out = SafetyScorer(text_policy(tmp_path), encode, "hand-made")(batch([{"status": ERROR, "frames": [], "read": None}]))
    assert out["decision"][0] == UNSCORED and out["text_match"][0] is None
