"""The scoring stage on real decoded media: aggregation, the hash bank, failures as data."""

import numpy as np
import pytest
import yaml
from conftest import sample_photo

from encoders.decode import MediaDecoder
from encoders.media import ERROR, OK
from safety.hashbank import HashBank
from safety.heads import EmbeddingHeads
from safety.policy import BLOCK, REVIEW, UNSCORED, load_policy
from safety.scorer import SafetyScorer

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
        "item_id": objects(PHOTOS), "kind": objects(["product"] * n), "title": objects(["mug", None, "cat print"]),
        "media_uri": objects([str(sample_photo(p)) for p in PHOTOS]), "status": objects([OK] * n),
        "error": objects([None] * n), "known_sha256": objects([None] * n), "frames": objects([None] * n),
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
    out = SafetyScorer(load_policy(), micro_encoder.encode_texts, micro_encoder.provenance, num_threads=1)(batch)
    assert list(out["decision"] == UNSCORED) == [False, True, False]
    assert "safety signal open_nsfw failed" in out["safety_error"][1] and np.isnan(out["risk"][1])
    assert np.isfinite(out["risk"][[0, 2]]).all()


def test_items_that_failed_to_ingest_are_unscored(decoded, micro_encoder):
    batch = dict(decoded)
    batch["status"] = objects([OK, ERROR, OK])
    out = SafetyScorer(load_policy(), micro_encoder.encode_texts, micro_encoder.provenance, num_threads=1)(batch)
    assert out["decision"][1] == UNSCORED and np.isnan(out["risk"][1])


def test_a_bank_match_blocks_and_names_the_entry(decoded, micro_encoder):
    bank = HashBank(["known-1"], ["weapons"], [decoded["pdq"][2][0]])
    out = SafetyScorer(load_policy(), micro_encoder.encode_texts, micro_encoder.provenance, bank, num_threads=1)(decoded)
    assert out["decision"][2] == BLOCK and out["hash_match"][2] == "known-1" and out["risk_weapons"][2] == 1.0
    assert out["hash_match"][0] is None and out["hash_match"][1] is None


def test_frames_aggregate_into_their_video(tmp_path):
    """Hand-made heads give three frames known risks: 0.2, 0.9, 0.5 on `weapons`."""
    dim = 4
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    heads = EmbeddingHeads(["weapons"], np.array([[logit(0.2), logit(0.9), logit(0.5), 0.0]]), np.zeros(1), "hand-made")
    heads.save(tmp_path / "heads.npz")
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump({
        "version": "agg-1", "heads": "heads.npz", "aggregation": {"top_k": 2},
        "prompt_bank": {"logit_scale": 100.0, "fields": [], "benign": ["a product"]},
        "categories": {"weapons": {"review": 0.4, "block": 0.95, "prompts": ["a gun"]}},
    }))
    scorer = SafetyScorer(load_policy(policy_file), lambda texts: np.eye(dim)[: len(texts)], "hand-made")
    batch = {
        "status": objects([OK]), "kind": objects(["video"]), "title": objects([None]),
        "frame_vectors": objects([np.eye(dim, dtype=np.float32)[:3]]), "text_vector": np.zeros((1, dim), np.float32),
        "pixels": objects([np.zeros((3, 8, 8, 3), np.uint8)]), "pdq": objects([objects([None] * 3)]),
        "pdq_quality": objects([np.full(3, -1)]), "timestamp_s": objects([np.array([0.5, 2.5, 4.5], np.float32)]),
    }
    out = scorer(batch)
    np.testing.assert_allclose(out["frame_risks"][0][:, 0], [0.2, 0.9, 0.5], rtol=1e-5)
    assert out["risk"][0] == pytest.approx(0.9) and out["risk_topk_mean"][0] == pytest.approx(0.7)
    assert out["frames_over_review"][0] == 2 and out["evidence_timestamp_s"][0] == 2.5
    assert out["decision"][0] == REVIEW
