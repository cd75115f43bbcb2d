"""Zero-shot prompt banks: the math by hand, and real (random-weight) text embeddings."""

import numpy as np

from shoplens.safety.policy import load_policy
from shoplens.safety.prompts import PromptBank

MODEL = "open_clip/shoplens-micro/random-seed0"


def tiny_policy():
    policy = load_policy()
    return policy.model_copy(
        update={
            "prompt_bank": policy.prompt_bank.model_copy(update={"benign": ["b1", "b2"], "logit_scale": 10.0}),
            "categories": {
                "weapons": policy.categories["weapons"].model_copy(update={"prompts": ["w1", "w2"]}),
                "drugs": policy.categories["drugs"].model_copy(update={"prompts": ["d1"]}),
            },
        }
    )


def test_prompt_bank_math_equals_a_hand_computation():
    axes = np.eye(5, dtype=np.float32)  # prompts b1, b2, w1, w2, d1 along the five axes
    bank = PromptBank(tiny_policy(), lambda texts: axes[: len(texts)], model="hand-made")
    x = np.array([0.1, 0.2, 0.6, 0.3, 0.7], np.float32)
    x /= np.linalg.norm(x)
    e = np.exp(10.0 * x)  # exp(s cos(x, p)) for each prompt p
    benign = (e[0] + e[1]) / 2
    weapons = (e[2] + e[3]) / 2
    expected = [weapons / (weapons + benign), e[4] / (e[4] + benign)]
    np.testing.assert_allclose(bank(x[None])[0], expected, rtol=1e-5)


def test_an_embedding_near_a_categorys_prompts_scores_highest_on_it(micro_encoder):
    policy = load_policy()
    bank = PromptBank(policy, micro_encoder.encode_texts, model=micro_encoder.provenance)
    rng = np.random.default_rng(0)
    assert bank.categories == [name for name, c in policy.categories.items() if c.prompts] != policy.names  # text-rule-only categories
    for c, name in enumerate(bank.categories):
        # Near the category's first prompt: random weights put some prompts of different
        # categories nearly on top of each other, so "near all of them" has no clear winner.
        prompt = micro_encoder.encode_texts(policy.categories[name].prompts[:1])[0]
        near = prompt + rng.normal(0, 0.01, len(prompt))
        scores = bank((near / np.linalg.norm(near))[None])[0]
        assert np.argmax(scores) == c, (name, dict(zip(bank.categories, scores.round(3))))
        assert 0 <= scores.min() and scores.max() <= 1


def test_prompt_embeddings_are_computed_once_per_model(micro_encoder):
    calls = []

    def encode(texts):
        calls.append(len(texts))
        return micro_encoder.encode_texts(texts)

    policy = load_policy()
    PromptBank(policy, encode, model="once-per-model")
    PromptBank(policy, encode, model="once-per-model")
    assert len(calls) == 1
