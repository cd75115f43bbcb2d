"""The scoring stage on real decoded media: aggregation, the hash bank, failures as data."""

import json

import numpy as np
import pytest
import yaml
from conftest import flip_bits, sample_photo

from shoplens.encoders.decode import MediaDecoder
from shoplens.encoders.rows import BLOCK, ERROR, OK, REVIEW, UNSCORED
from shoplens.safety.hashbank import HashBank
from shoplens.safety.heads import EmbeddingHeads
from shoplens.safety.policy import PolicyError, load_policy
from shoplens.safety.scorer import SafetyScorer

PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png"]


def objects(values) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


@pytest.fixture(scope="module")
def decoded(micro_encoder):
    """Three real photos decoded and fingerprinted by the decode stage, embedded by the micro model."""
    n = len(PHOTOS)
    batch = {
        "item_id": objects(PHOTOS),
        "kind": objects(["product"] * n),
        "title": objects(["mug", None, "cat print"]),
        "media_uri": objects([str(sample_photo(p)) for p in PHOTOS]),
        "status": objects([OK] * n),
        "error": objects([None] * n),
        "known_sha256": objects([None] * n),
        "frames": objects([None] * n),
    }
    batch = MediaDecoder(micro_encoder.image_size, fingerprint=True)(batch)
    batch["frame_vectors"] = objects([micro_encoder.encode_images(p) for p in batch["pixels"]])
    batch["text_vector"] = np.stack([micro_encoder.encode_texts([t or "-"])[0] for t in batch["title"]])
    return batch


def test_every_item_is_scored_on_every_category(decoded, micro_encoder):
    policy = load_policy()
    out = SafetyScorer(policy, micro_encoder.encode_texts, micro_encoder.provenance, num_threads=1)(decoded)
    risks = np.stack([out[f"risk_{c}"] for c in policy.names], axis=1)
    assert np.isfinite(risks).all() and ((0 <= risks) & (risks <= 1)).all()
    np.testing.assert_allclose(out["risk"], risks.max(axis=1))
    assert set(out["decision"]) <= {"allow", "review", "block"} and list(out["safety_error"]) == [None] * 3
    assert list(out["safety_version"]) == [policy.version] * 3
    assert np.isnan(out["evidence_timestamp_s"]).all()  # products have no timeline
    assert [r.shape for r in out["frame_risks"]] == [(1, len(policy.names))] * 3


def test_a_signal_that_fails_for_one_item_leaves_it_unscored(decoded, micro_encoder):
    batch = dict(decoded)
    batch["pixels"] = objects(list(decoded["pixels"]))
    batch["pixels"][1] = np.zeros((1, 0, 0, 3), np.uint8)  # a frame the pixel models cannot take
    scorer = SafetyScorer(load_policy(), micro_encoder.encode_texts, micro_encoder.provenance, num_threads=1)
    out = scorer(batch)
    assert list(out["decision"] == UNSCORED) == [False, True, False]
    assert out["safety_error"][1].startswith("safety signal open_nsfw failed: ValueError: ") and np.isnan(out["risk"][1])
    # The batch call failed, so the items were scored one by one: each good item has its own risks.
    clean = scorer(decoded)
    for key in ("risk", "frame_risks", "signal_scores"):
        for i in (0, 2):
            np.testing.assert_array_equal(out[key][i], clean[key][i])


def test_items_that_failed_to_ingest_are_unscored(decoded, micro_encoder):
    batch = dict(decoded)
    batch["status"] = objects([OK, ERROR, OK])
    out = SafetyScorer(load_policy(), micro_encoder.encode_texts, micro_encoder.provenance, num_threads=1)(batch)
    assert out["decision"][1] == UNSCORED and np.isnan(out["risk"][1])


def test_a_bank_match_blocks_its_item_only_and_names_the_entry(decoded, micro_encoder):
    """The first item of three is 20 bits from a bank entry; the second is 32 bits from another
    (too far): only the first is blocked, and the others decide as without a bank."""
    policy = load_policy()
    unbanked = SafetyScorer(policy, micro_encoder.encode_texts, micro_encoder.provenance, num_threads=1)(decoded)
    bank = HashBank(
        ["known-1", "known-2"], ["weapons", "sexual"], [flip_bits(decoded["pdq"][0][0], 20), flip_bits(decoded["pdq"][1][0], 32)]
    )
    out = SafetyScorer(policy, micro_encoder.encode_texts, micro_encoder.provenance, bank, num_threads=1)(decoded)
    assert out["decision"][0] == BLOCK and out["hash_match"][0] == "known-1" and out["risk_weapons"][0] == 1.0
    assert list(out["frame_hash_match"][0]) == ["known-1"] and out["frame_risks"][0][0, policy.names.index("weapons")] == 1.0
    assert list(out["hash_match"][1:]) == [None, None] and [list(m) for m in out["frame_hash_match"][1:]] == [[None], [None]]
    assert list(out["decision"][1:]) == list(unbanked["decision"][1:])
    for c in policy.names:
        np.testing.assert_array_equal(out[f"risk_{c}"][1:], unbanked[f"risk_{c}"][1:])
        if c != "weapons":
            assert out[f"risk_{c}"][0] == unbanked[f"risk_{c}"][0]  # the match certain for its own category only


class Poisoned:
    """A real pixel model whose outputs for the frames showing `target` are replaced by `value`
    (all outputs, or only output number `output`): a model that returns NaN or inf for one picture."""

    def __init__(self, model, target: np.ndarray, value: float, output: int | None = None):
        self.model, self.target, self.value, self.output = model, target, value, output

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        out = np.array(self.model(frames), np.float32)
        shows_target = np.all(frames == self.target, axis=(1, 2, 3))
        out[shows_target, slice(None) if self.output is None else self.output] = self.value
        return out


@pytest.fixture(scope="module")
def default_scorer(micro_encoder):
    return SafetyScorer(load_policy(), micro_encoder.encode_texts, micro_encoder.provenance, num_threads=1)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("model, output", [("open_nsfw", None), ("image_safety_s", 0)], ids=["open_nsfw", "image_safety_s-nsfl"])
def test_a_non_finite_pixel_score_leaves_its_item_unscored_and_no_other(decoded, default_scorer, monkeypatch, model, output, value):
    policy = default_scorer.policy
    clean = default_scorer(decoded)
    signal = next(s for s in default_scorer.frame_signals if s.name == model)
    monkeypatch.setattr(signal, "fn", Poisoned(signal.fn, decoded["pixels"][0][0], value, output))  # the first item of three
    out = default_scorer(decoded)

    assert out["decision"][0] == UNSCORED and out["safety_error"][0] == f"safety signal {model} gave no finite score"
    assert np.isnan(out["risk"][0]) and all(np.isnan(out[f"risk_{c}"][0]) for c in policy.names)
    assert np.isnan(out["risk_topk_mean"][0]) and out["frames_over_review"][0] == -1 and out["hash_match"][0] is None
    assert np.isnan(out["frame_risks"][0]).all()
    stored = json.loads(out["signal_scores"][0])[model]
    assert list(stored.values())[output or 0] is None  # kept as null, never as a number
    # The other items: exactly as without the bad score.
    assert list(out["decision"][1:]) == list(clean["decision"][1:]) and list(out["safety_error"][1:]) == [None, None]
    for key in ("risk", "risk_topk_mean", *(f"risk_{c}" for c in policy.names)):
        np.testing.assert_array_equal(out[key][1:], clean[key][1:])
    for i in (1, 2):
        np.testing.assert_array_equal(out["frame_risks"][i], clean["frame_risks"][i])
        assert out["signal_scores"][i] == clean["signal_scores"][i]


def test_frames_aggregate_into_their_video(tmp_path):
    """Hand-made heads give three frames known risks: 0.2, 0.9, 0.5 on `weapons`."""
    dim = 4
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    heads = EmbeddingHeads(["weapons"], np.array([[logit(0.2), logit(0.9), logit(0.5), 0.0]]), np.zeros(1), "hand-made")
    heads.save(tmp_path / "heads.npz")
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        yaml.safe_dump(
            {
                "version": "agg-1",
                "heads": "heads.npz",
                "aggregation": {"top_k": 2},
                "prompt_bank": {"logit_scale": 100.0, "fields": [], "benign": ["a product"]},
                "categories": {"weapons": {"review": 0.4, "block": 0.95, "prompts": ["a gun"]}},
            }
        )
    )
    scorer = SafetyScorer(load_policy(policy_file), lambda texts: np.eye(dim)[: len(texts)], "hand-made")
    batch = {
        "status": objects([OK]),
        "kind": objects(["video"]),
        "title": objects([None]),
        "frame_vectors": objects([np.eye(dim, dtype=np.float32)[:3]]),
        "text_vector": np.zeros((1, dim), np.float32),
        "pixels": objects([np.zeros((3, 8, 8, 3), np.uint8)]),
        "pdq": objects([objects([None] * 3)]),
        "pdq_quality": objects([np.full(3, -1)]),
        "timestamp_s": objects([np.array([0.5, 2.5, 4.5], np.float32)]),
    }
    out = scorer(batch)
    np.testing.assert_allclose(out["frame_risks"][0][:, 0], [0.2, 0.9, 0.5], rtol=1e-5)
    assert out["risk"][0] == pytest.approx(0.9) and out["risk_topk_mean"][0] == pytest.approx(0.7)
    assert out["frames_over_review"][0] == 2 and out["evidence_timestamp_s"][0] == 2.5
    assert out["decision"][0] == REVIEW


def test_each_item_aggregates_its_own_frames_only(tmp_path):
    """Hand-made heads give each basis vector a known `weapons` risk (e0 0.2, e1 0.9, e2 0.5,
    e3 0.1); a batch of two videos around a failed item and a product: no frame counts for an
    item it is not part of."""
    dim = 4
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    heads = EmbeddingHeads(["weapons"], np.array([[logit(0.2), logit(0.9), logit(0.5), logit(0.1)]]), np.zeros(1), "hand-made")
    heads.save(tmp_path / "heads.npz")
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        yaml.safe_dump(
            {
                "version": "agg-2",
                "heads": "heads.npz",
                "aggregation": {"top_k": 2},
                "prompt_bank": {"logit_scale": 100.0, "fields": [], "benign": ["a product"]},
                "categories": {"weapons": {"review": 0.4, "block": 0.95, "prompts": ["a gun"]}},
            }
        )
    )
    scorer = SafetyScorer(load_policy(policy_file), lambda texts: np.eye(dim)[: len(texts)], "hand-made")
    e = np.eye(dim, dtype=np.float32)
    frames = [e[[1, 0]], np.zeros((0, dim), np.float32), e[[3]], e[[2, 3, 0]]]
    times = [[1.0, 2.0], [], [0.0], [0.5, 1.5, 2.5]]
    n = len(frames)
    batch = {
        "status": objects([OK, ERROR, OK, OK]),
        "kind": objects(["video", "product", "product", "live"]),
        "title": objects([None] * n),
        "frame_vectors": objects(frames),
        "text_vector": np.zeros((n, dim), np.float32),
        "pixels": objects([np.zeros((len(f), 8, 8, 3), np.uint8) for f in frames]),
        "pdq": objects([objects([None] * len(f)) for f in frames]),
        "pdq_quality": objects([np.full(len(f), -1) for f in frames]),
        "timestamp_s": objects([np.array(t, np.float32) for t in times]),
    }
    out = scorer(batch)
    for i, expected in {0: [0.9, 0.2], 2: [0.1], 3: [0.5, 0.1, 0.2]}.items():
        np.testing.assert_allclose(out["frame_risks"][i][:, 0], expected, rtol=1e-5)
    assert out["frame_risks"][1] is None
    np.testing.assert_allclose(out["risk"], [0.9, np.nan, 0.1, 0.5], rtol=1e-5)
    np.testing.assert_allclose(out["risk_topk_mean"], [0.55, np.nan, 0.1, 0.35], rtol=1e-5)
    assert list(out["frames_over_review"]) == [1, -1, 0, 1]
    np.testing.assert_array_equal(out["evidence_timestamp_s"], [1.0, np.nan, np.nan, 0.5])
    assert list(out["decision"]) == [REVIEW, UNSCORED, "allow", REVIEW]


def test_a_bank_match_blocks_even_when_a_signal_failed(decoded, micro_encoder):
    """Known-violating media is blocked whatever else failed: never `unscored`, never served."""
    batch = dict(decoded)
    batch["pixels"] = objects(list(decoded["pixels"]))
    batch["pixels"][1] = np.zeros((1, 0, 0, 3), np.uint8)  # a frame the pixel models cannot take
    bank = HashBank(["known"], ["sexual"], [flip_bits(decoded["pdq"][1][0], 10)])
    out = SafetyScorer(load_policy(), micro_encoder.encode_texts, micro_encoder.provenance, bank, num_threads=1)(batch)
    assert (out["decision"][1], out["hash_match"][1]) == (BLOCK, "known")
    assert "safety signal open_nsfw failed" in out["safety_error"][1]  # why the other signals say nothing
    assert list(out["hash_match"][[0, 2]]) == [None, None] and UNSCORED not in out["decision"][[0, 2]]


def hand_made_policy(tmp_path, fields, **extra):
    """Two categories, one prompt each, over 3-d hand-made embeddings; `extra` adds to the file."""
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        yaml.safe_dump(
            {
                "version": "hand-made",
                "prompt_bank": {"logit_scale": 100.0, "fields": fields, "benign": ["a product"]},
                "categories": {
                    "weapons": {"review": 0.4, "block": 0.95, "prompts": ["a gun"]},
                    "sexual": {"review": 0.4, "block": 0.95, "prompts": ["nudity"]},
                },
                **extra,
            },
            sort_keys=False,
        )
    )
    return load_policy(policy_file)


def stored_batch(frame_scores: list, frame: int) -> dict:
    """Products of one frame each (the basis vector `frame`), titled (e0), with the pixel outputs
    an earlier run kept (`frame_scores`: a JSON text or None per item)."""
    n, e = len(frame_scores), np.eye(3, dtype=np.float32)
    return {
        "status": objects([OK] * n),
        "kind": objects(["product"] * n),
        "title": objects(["a title"] * n),
        "frame_vectors": objects([e[[frame]]] * n),
        "text_vector": np.tile(e[0], (n, 1)),
        "pdq": objects([objects([None])] * n),
        "pdq_quality": objects([np.full(1, -1)] * n),
        "timestamp_s": objects([np.zeros(1, np.float32)] * n),
        "frame_signal_scores": objects([objects([s]) for s in frame_scores]),
    }


def test_each_signal_is_named_in_the_scores_kept_and_a_model_output_may_feed_nothing(tmp_path):
    """`signal_scores` names every signal as calibration and rescore read it (`prompt_bank`,
    `title_prompt_bank`, `heads`, the pixel model's name); a pixel model output the policy maps
    to no category (image_safety_s's `nsfl` here) feeds nothing. An item whose stored outputs
    lack the pixel model (kept as nothing at all) is unscored, saying so."""
    dim = 3
    EmbeddingHeads(["weapons"], np.zeros((1, dim)), np.full(1, -12.0), "hand-made").save(tmp_path / "heads.npz")
    policy = hand_made_policy(
        tmp_path, ["image", "title"], heads="heads.npz", pixel_models={"image_safety_s": {"outputs": {"nsfw": ["sexual"]}}}
    )
    scorer = SafetyScorer(policy, lambda texts: np.eye(dim)[: len(texts)], "hand-made", stored_pixel_scores=True)
    kept = json.dumps({"image_safety_s": {"nsfl": 0.97, "nsfw": 0.5}})
    out = scorer(stored_batch([kept, None], frame=0))  # e0: what the benign prompt embeds as
    scores = json.loads(out["signal_scores"][0])
    assert set(scores) == {"prompt_bank", "title_prompt_bank", "heads", "image_safety_s"}
    assert scores["image_safety_s"] == {"nsfl": 0.97, "nsfw": 0.5} and set(scores["heads"]) == {"weapons"}
    assert set(json.loads(out["frame_signal_scores"][0][0])) == {"prompt_bank", "heads", "image_safety_s"}
    # `nsfl` 0.97 feeds nothing: `sexual` is nsfw's 0.5 (the prompt banks and heads give about 0).
    assert out["risk_sexual"][0] == pytest.approx(0.5) and out["risk_weapons"][0] < 1e-4 and out["decision"][0] == REVIEW
    assert out["decision"][1] == UNSCORED
    assert out["safety_error"][1] == (
        "safety signal image_safety_s failed: pixel model image_safety_s did not run when this item was ingested: re-ingest it to score it"
    )


def test_each_model_scores_with_its_own_prompt_embeddings_and_foreign_heads_are_refused(tmp_path):
    """Prompt embeddings are kept per model: a second model in the same process, whose text tower
    embeds the prompts differently, scores with its own. Heads of another model are refused."""
    policy = hand_made_policy(tmp_path, ["image"])
    e = np.eye(3)
    # Prompts in order: benign "a product", "a gun", "nudity". Model a embeds them as e0, e1, e2; model b as e1, e0, e2.
    first = SafetyScorer(policy, lambda texts: e[[0, 1, 2]], "hand-made-a")
    second = SafetyScorer(policy, lambda texts: e[[1, 0, 2]], "hand-made-b")
    batch = stored_batch([None], frame=1)  # e1: "a gun" under model a, the benign prompt under model b
    assert first(batch)["risk_weapons"][0] == pytest.approx(1.0) and first(batch)["decision"][0] == BLOCK
    assert second(batch)["risk_weapons"][0] < 1e-6 and second(batch)["decision"][0] == "allow"
    heads = EmbeddingHeads(["weapons"], np.zeros((1, 3)), np.zeros(1), "hand-made-a")
    with pytest.raises(PolicyError, match="the policy's heads were trained on hand-made-a embeddings, not hand-made-b"):
        SafetyScorer(policy, lambda texts: e[[1, 0, 2]], "hand-made-b", heads=heads)


def test_a_title_counts_for_its_own_item_and_a_title_without_a_finite_score_leaves_it_unscored(tmp_path):
    """Frames all show e0 (benign); the titles differ: e1 (what `a gun` embeds as) blocks its
    item through the title alone, no title counts for nothing, and a title vector of NaN (an
    encoder gone wrong) leaves only its own item unscored."""
    policy = hand_made_policy(tmp_path, ["image", "title"])
    scorer = SafetyScorer(policy, lambda texts: np.eye(3)[: len(texts)], "hand-made-titles")
    batch = stored_batch([None] * 4, frame=0)
    batch["title"] = objects(["a gun", None, "broken", "a product"])
    batch["text_vector"] = np.array([[0, 1, 0], [0, 1, 0], [np.nan] * 3, [1, 0, 0]], np.float32)  # the untitled one's is ignored
    out = scorer(batch)
    assert list(out["decision"]) == [BLOCK, "allow", UNSCORED, "allow"]
    assert out["risk_weapons"][0] == pytest.approx(1.0) and out["risk_weapons"][1] < 1e-6 and out["risk_weapons"][3] < 1e-6
    assert out["safety_error"][2] == "safety signal title_prompt_bank gave no finite score"
    assert [e is None for e in out["safety_error"]] == [True, True, False, True]


def test_a_batch_whose_items_all_failed_is_all_unscored(tmp_path):
    policy = hand_made_policy(tmp_path, ["image", "title"])
    scorer = SafetyScorer(policy, lambda texts: np.eye(3)[: len(texts)], "hand-made-failed")
    batch = stored_batch([None] * 2, frame=1)
    batch["status"] = objects([ERROR, ERROR])
    batch["frame_vectors"] = objects([np.zeros((0, 3), np.float32)] * 2)  # failed items have no frames
    batch |= {"pdq": objects([objects([])] * 2), "pdq_quality": objects([np.zeros(0, int)] * 2)}
    out = scorer(batch)
    assert list(out["decision"]) == [UNSCORED, UNSCORED] and np.isnan(out["risk"]).all()
    assert list(out["hash_match"]) == [None, None] and list(out["frame_risks"]) == [None, None]


def test_a_policy_with_no_signal_for_a_category_leaves_every_item_unscored(tmp_path):
    """No prompt-bank field, no heads, no pixel model: nothing scores any category, so nothing
    is `allow`."""
    policy = hand_made_policy(tmp_path, [])
    out = SafetyScorer(policy, lambda texts: np.eye(3)[: len(texts)], "hand-made-none")(stored_batch([None] * 2, frame=1))
    assert list(out["decision"]) == [UNSCORED, UNSCORED] and np.isnan(out["risk"]).all()
    assert list(out["safety_error"]) == ["no safety signal scored every category"] * 2


def frame_heads_policy(tmp_path, fields: list[str], review: float = 0.4) -> SafetyScorer:
    """`weapons` scored on frames by hand-made heads (e0 0.2, e1 0.9, e2 0.5) and, like `sexual`,
    by the prompt bank on `fields` (a frame or title embedding like no prompt gives exactly 0.5)."""
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    weights = np.array([[logit(0.2), logit(0.9), 0.0, 0.0]])
    EmbeddingHeads(["weapons"], weights, np.zeros(1), "hand-made").save(tmp_path / "heads.npz")
    (tmp_path / "policy.yaml").write_text(
        yaml.safe_dump(
            {
                "version": "frames-1",
                "heads": "heads.npz",
                "aggregation": {"top_k": 2},
                "prompt_bank": {"logit_scale": 100.0, "fields": fields, "benign": ["a product"]},
                "categories": {
                    "weapons": {"review": review, "block": 0.95, "prompts": ["a gun"]},
                    "sexual": {"review": 0.4, "block": 0.95, "prompts": ["nudity"]},
                },
            }
        )
    )
    embed = {"a product": 0, "a gun": 2, "nudity": 3}
    return SafetyScorer(load_policy(tmp_path / "policy.yaml"), lambda texts: np.eye(4)[[embed[t] for t in texts]], "hand-made")


def video(frames: list[int], title_vector: int = 0) -> dict:
    e = np.eye(4, dtype=np.float32)
    return {
        "status": objects([OK]),
        "kind": objects(["video"]),
        "title": objects(["a title"]),
        "frame_vectors": objects([e[frames].reshape(-1, 4)]),
        "text_vector": e[[title_vector]],
        "pdq": objects([objects([None] * len(frames))]),
        "pdq_quality": objects([np.full(len(frames), -1)]),
        "timestamp_s": objects([np.arange(len(frames), dtype=np.float32)]),
    }


def test_a_frame_at_exactly_the_review_threshold_counts_as_reaching_it(tmp_path):
    scorer = frame_heads_policy(tmp_path, ["title"], review=0.5)
    out = scorer(video([0, 2, 2]))  # weapons 0.2, 0.5, 0.5
    assert out["frames_over_review"][0] == 2 and out["risk_weapons"][0] == 0.5 and out["decision"][0] == REVIEW


def test_a_video_without_frames_is_unscored_saying_so_and_the_batch_goes_on(tmp_path):
    """A stored video whose frames rows are gone (what rescore reads) beside one that has them."""
    scorer = frame_heads_policy(tmp_path, ["image", "title"])
    first, second = video([]), video([0, 1])
    out = scorer({k: objects([first[k][0], second[k][0]]) if k != "text_vector" else np.vstack([first[k], second[k]]) for k in first})
    assert out["decision"][0] == UNSCORED and out["safety_error"][0] == "no frames to score" and np.isnan(out["risk"][0])
    assert out["frame_risks"][0].shape == (0, 2) and set(json.loads(out["signal_scores"][0])) == {"title_prompt_bank"}
    assert out["safety_error"][1] is None and out["risk_weapons"][1] == pytest.approx(0.9)
