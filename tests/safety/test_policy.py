"""The policy file: what it must contain, what it refuses, and how it decides."""

import numpy as np
import pytest
import yaml

from shoplens.encoders.rows import ALLOW, BLOCK, REVIEW, UNSCORED
from shoplens.safety.policy import DEFAULT_POLICY, PolicyError, load_policy


def test_the_shipped_policy_is_versioned_and_covers_the_categories():
    policy = load_policy()
    assert policy.version and policy.source == str(DEFAULT_POLICY)
    assert {"sexual", "violence", "weapons", "drugs", "hate", "tobacco_alcohol"} <= set(policy.names)
    assert all(c.review < c.block for c in policy.categories.values())
    assert set(policy.pixel_models) == {"open_nsfw", "image_safety_s"}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["categories"]["weapons"].update(review=0.9, block=0.5), "above block threshold"),
        (lambda d: d["pixel_models"].update(nudenet={"outputs": {"x": ["sexual"]}}), "unknown pixel model"),
        (lambda d: d["pixel_models"]["open_nsfw"]["outputs"].update(nsfw=["gambling"]), "unknown categories"),
        (lambda d: d["categories"].update({"Bad Name": d["categories"]["hate"]}), "lower-case identifier"),
        (lambda d: d.update(unknown_key=1), "unknown_key"),
        (lambda d: d.pop("version"), "version"),
    ],
)
def test_an_invalid_policy_is_refused_with_the_reason(tmp_path, change, message):
    document = yaml.safe_load(DEFAULT_POLICY.read_text())
    change(document)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(PolicyError, match=message):
        load_policy(path)


def test_an_unreadable_policy_is_a_policy_error(tmp_path):
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("version: [unclosed")
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "broken.yaml")


def test_decisions_follow_the_thresholds_and_unscored_is_never_allow():
    policy = load_policy()
    review, block = policy.review_thresholds, policy.block_thresholds
    low = review - 0.01
    risks = np.stack(
        [
            low,  # everything under review
            np.where(np.arange(len(low)) == 2, review, low),  # one category at its review threshold
            np.where(np.arange(len(low)) == 0, block, low),  # one at its block threshold
            low,  # low, but matched the hash bank
            low,  # low, but a signal failed
            np.full(len(low), np.nan),  # never scored
        ]
    ).astype(np.float32)
    scored = np.array([True, True, True, True, False, False])
    matched = np.array([False, False, False, True, False, False])
    assert list(policy.decide(risks, scored, matched)) == [ALLOW, REVIEW, BLOCK, BLOCK, UNSCORED, UNSCORED]


def test_thresholds_take_the_best_recall_at_the_precision_asked():
    from shoplens.safety.fitting import roc_auc, threshold_for_precision

    scores = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    y = np.array([1, 1, 0, 1, 1, 0, 0, 1])
    # At 0.6: 4 of 5 flagged violate (0.8); at 0.3: 5 of 8 (0.625).
    assert threshold_for_precision(scores, y, 0.8) == 0.6
    assert threshold_for_precision(scores, y, 0.6) == 0.3
    assert threshold_for_precision(scores, y, 1.0) == 0.9
    assert threshold_for_precision(scores, np.zeros(8, int), 0.5) == 1.0  # nothing to find: flag nothing
    assert threshold_for_precision(np.array([0.5, 0.5, 0.5]), np.array([1, 0, 0]), 0.5) == 1.0  # ties go together
    assert roc_auc(scores, y) == round((3 + 3 + 2 + 2 + 0) / 15, 4)  # each violating item against the 3 others


def test_a_category_named_like_a_reserved_column_is_refused(tmp_path):
    policy = yaml.safe_load(DEFAULT_POLICY.read_text())
    policy["categories"]["topk_mean"] = {"review": 0.5, "block": 0.9, "prompts": ["x"]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(policy))
    with pytest.raises(PolicyError, match="'topk_mean' is reserved"):
        load_policy(tmp_path / "p.yaml")


def test_logit_and_sigmoid_are_inverse_and_clip_certainties():
    from shoplens.safety.policy import logit, sigmoid

    p = np.array([0.0, 1e-9, 0.1, 0.5, 0.9, 1.0])
    z = logit(p)
    bound = np.log(1e-6) - np.log1p(-1e-6)  # 0 and 1 are clipped to 1e-6 and 1 - 1e-6: finite
    np.testing.assert_allclose(z, [bound, bound, np.log(0.1 / 0.9), 0.0, np.log(9.0), -bound], rtol=1e-9)
    np.testing.assert_allclose(sigmoid(z[2:5]), p[2:5], rtol=1e-12)
    np.testing.assert_allclose(sigmoid(np.array([-np.log(3.0), 0.0, np.log(3.0)])), [0.25, 0.5, 0.75], rtol=1e-12)


def test_a_calibration_combines_the_logits_of_its_signals_and_an_absent_signal_adds_nothing():
    from shoplens.safety.policy import CategoryCalibration

    calibration = CategoryCalibration(bias=-1.0, weights={"heads": 2.0, "open_nsfw": 0.5, "absent": 7.0})
    signals = {
        "heads": np.array([0.5, 0.9, np.nan, 0.5]),
        "open_nsfw": np.array([0.5, 0.5, 0.9, 0.1]),
        "unweighted": np.array([0.99, 0.99, 0.99, 0.99]),
    }
    z = np.array([-1.0, -1.0 + 2.0 * np.log(9.0), -1.0 + 0.5 * np.log(9.0), -1.0 - 0.5 * np.log(9.0)])  # NaN adds nothing
    np.testing.assert_allclose(calibration.apply(signals, 4), 1.0 / (1.0 + np.exp(-z)), rtol=1e-9)
    np.testing.assert_allclose(CategoryCalibration(bias=0.3, weights={}).apply({}, 2), [1 / (1 + np.exp(-0.3))] * 2, rtol=1e-9)


def test_a_calibrated_category_takes_its_combination_and_the_others_the_largest_signal():
    from shoplens.safety.policy import CategoryCalibration

    calibration = {"weapons": CategoryCalibration(bias=0.0, weights={"heads": 1.0})}
    policy = load_policy().model_copy(update={"calibration": calibration})
    k = policy.names.index("weapons")
    heads = np.full((2, len(policy.names)), np.nan, np.float32)
    heads[:, k] = [0.2, 0.7]
    prompts = np.full((2, len(policy.names)), 0.3, np.float32)
    risks = policy.fuse({"heads": heads, "prompt_bank": prompts}, 2)
    np.testing.assert_allclose(risks[:, k], [0.2, 0.7], rtol=1e-5)  # sigmoid(logit(p)): the heads' own score, not max(0.3, p)
    others = [c for c in range(len(policy.names)) if c != k]
    np.testing.assert_allclose(risks[:, others], 0.3)


def test_the_heads_file_is_relative_to_the_policy_file():
    from pathlib import Path

    from shoplens.safety.policy import Policy

    document = yaml.safe_load(DEFAULT_POLICY.read_text())

    def policy(**fields) -> Policy:
        return Policy(**{**document, "heads": None, **fields})

    assert policy(heads="heads.npz").heads_path() == Path("heads.npz")  # no file: as given
    assert policy(heads="heads.npz", source="/policies/p.yaml").heads_path() == Path("/policies/heads.npz")
    assert policy(heads="/weights/h.npz", source="/policies/p.yaml").heads_path() == Path("/weights/h.npz")
    assert policy(source="/policies/p.yaml").heads_path() is None


def test_the_stored_policy_text_keeps_the_files_order_and_its_characters():
    """What the database stores (`policy_yaml`) reads back as the same policy, its keys and
    categories in the file's order, its prompts as written (not escaped)."""
    from shoplens.safety.policy import parse_policy, policy_yaml

    document = yaml.safe_load(DEFAULT_POLICY.read_text())
    document["categories"]["weapons"]["prompts"].append("un couteau à cran d'arrêt, ナイフ")
    policy = parse_policy(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), "p.yaml")
    text = policy_yaml(policy)
    assert text.startswith("version:") and "un couteau à cran d'arrêt, ナイフ" in text and "source" not in text
    again = parse_policy(text, "stored")
    assert again.names == policy.names != sorted(policy.names)
    assert again.model_dump(exclude={"source"}) == policy.model_dump(exclude={"source"})
