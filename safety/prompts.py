"""Zero-shot prompt banks: CLIP embeddings scored against each category's prompts and the
policy's benign prompts.

For category c with prompts P_c and benign prompts B, at logit scale s:

    p_c(x) = m_c / (m_c + m_B),   m_c = mean_{p in P_c} exp(s cos(x, p)),   m_B = mean_{b in B} exp(s cos(x, b))

a two-way softmax of the category against benign content (not against the other categories),
each side's prompts averaged so that how many prompts a side has does not tip the balance.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from shoplens.safety.policy import Policy

# (model provenance, prompts) -> their embeddings: once per model in a process.
_EMBEDDINGS: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}


class PromptBank:
    def __init__(self, policy: Policy, encode_texts: Callable[[list[str]], np.ndarray], model: str):
        prompts = list(policy.prompt_bank.benign)
        owners = [-1] * len(prompts)  # -1: benign
        self.categories = policy.prompted  # a category without prompts is scored by its other signals
        for c, name in enumerate(self.categories):
            prompts += policy.categories[name].prompts
            owners += [c] * len(policy.categories[name].prompts)
        key = (model, tuple(prompts))
        if key not in _EMBEDDINGS:
            _EMBEDDINGS[key] = np.asarray(encode_texts(prompts), np.float32)
        self.embeddings = _EMBEDDINGS[key]  # [P, D], L2-normalised
        self.scale = policy.prompt_bank.logit_scale
        owners = np.array(owners)
        self.benign = owners == -1
        membership = (owners[:, None] == np.arange(len(self.categories))[None, :]).astype(np.float64)  # [P, C]
        self.averaging = membership / membership.sum(axis=0)  # weights @ averaging: each category's mean

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        """Probabilities [N, C] of the prompted categories for L2-normalised vectors [N, D]."""
        logits = self.scale * (np.asarray(vectors, np.float64) @ self.embeddings.T.astype(np.float64))  # [N, P]
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))  # shifted: the ratio is unchanged
        category = weights @ self.averaging  # [N, C]
        benign = weights[:, self.benign].mean(axis=1, keepdims=True)
        return (category / (category + benign)).astype(np.float32)
