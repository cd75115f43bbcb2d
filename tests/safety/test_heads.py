"""Embedding heads: trained on labelled embeddings, saved and loaded exactly."""

import itertools

import numpy as np

from shoplens.safety.heads import EmbeddingHeads, train_heads


def test_heads_learn_reviewers_labels_on_real_embeddings_and_round_trip(micro_encoder, tmp_path):
    titles = list(
        itertools.product(
            ("red", "blue", "green", "black", "white", "pink", "grey", "gold"),
            ("leather", "cotton", "steel", "wooden", "plastic"),
            ("shoe", "mug", "poster", "knife", "lamp", "toy", "hat", "bag"),
        )
    )
    vectors = micro_encoder.encode_texts([" ".join(t) for t in titles])
    label = np.array([thing == "knife" for *_, thing in titles], int)  # reviewers: knives are weapons
    order = np.random.default_rng(0).permutation(len(titles))
    train, held_out = order[:160], order[160:]
    heads = train_heads(vectors, {"weapons": (train, label[train])}, model=micro_encoder.provenance)
    predicted = heads(vectors[held_out])[:, 0] > 0.5
    assert (predicted == label[held_out]).mean() >= 0.97 and predicted[label[held_out] == 1].mean() >= 0.9
    path = tmp_path / "heads.npz"
    heads.save(path)
    loaded = EmbeddingHeads.load(path)
    assert loaded.categories == ["weapons"] and loaded.model == micro_encoder.provenance
    np.testing.assert_array_equal(loaded(vectors), heads(vectors))


def test_heads_of_another_width_or_model_do_not_fit(micro_encoder):
    import pytest

    from shoplens.safety.policy import PolicyError

    heads = EmbeddingHeads(["weapons"], np.zeros((1, 7)), np.zeros(1), micro_encoder.provenance)
    with pytest.raises(PolicyError, match="take 7-d embeddings"):
        heads.check_fits(micro_encoder.provenance, micro_encoder.dim)
    with pytest.raises(PolicyError, match="were trained on"):
        heads.check_fits("open_clip/ViT-B-32/laion2b_s34b_b79k", 7)
    heads.check_fits(micro_encoder.provenance, 7)
