"""Embedding heads: one logistic regression per category on the CLIP embedding, trained from
reviewers' labels and stored in a weights file that a policy names."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shoplens.safety.policy import Policy, PolicyError, load_policy, sigmoid


@dataclass(frozen=True)
class EmbeddingHeads:
    categories: list[str]
    weights: np.ndarray  # [C, D]
    bias: np.ndarray  # [C]
    model: str  # the embeddings' provenance: heads fit one model's vector space only

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        """P(violating) [N, C] for embeddings [N, D]."""
        return sigmoid(np.asarray(vectors, np.float64) @ self.weights.T + self.bias).astype(np.float32)

    def check_fits(self, model: str, dim: int) -> None:
        """PolicyError unless these heads score `model`'s `dim`-d embeddings."""
        if self.model != model:
            raise PolicyError(f"the policy's heads were trained on {self.model} embeddings, not {model}")
        if self.weights.shape[1] != dim:
            raise PolicyError(f"the policy's heads take {self.weights.shape[1]}-d embeddings, not {model}'s {dim}-d ones")

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, categories=np.array(self.categories), weights=self.weights, bias=self.bias, model=np.array(self.model))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> EmbeddingHeads:
        """Heads from `to_bytes`' format; ValueError for anything else (never a pickle)."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as f:
                heads = cls(
                    [str(c) for c in f["categories"]], f["weights"].astype(np.float64), f["bias"].astype(np.float64), str(f["model"])
                )
        except Exception as e:  # not an npz, a missing array, an object array...
            raise ValueError(f"not a heads file written by `shoplens safety calibrate`: {type(e).__name__}: {e}") from None
        count = len(heads.categories)
        if heads.weights.ndim != 2 or heads.weights.shape[0] != count or heads.bias.shape != (count,):
            raise ValueError(f"heads file is inconsistent: {count} categories, weights {heads.weights.shape}, bias {heads.bias.shape}")
        return heads

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingHeads:
        return cls.from_bytes(Path(path).read_bytes())


def train_heads(vectors: np.ndarray, labels: dict[str, tuple[np.ndarray, np.ndarray]], model: str, l2: float = 1e-2) -> EmbeddingHeads:
    """Fits one head per category. `labels[c]` = (row indices into `vectors`, 0/1 labels).
    L2-regularised logistic regression by Newton's method: a few exact steps, no tuning."""
    vectors = np.asarray(vectors, np.float64)
    categories = list(labels)
    weights = np.zeros((len(categories), vectors.shape[1]))
    bias = np.zeros(len(categories))
    for c, (rows, y) in enumerate(labels.values()):
        weights[c], bias[c] = fit_logistic(vectors[rows], np.asarray(y, np.float64), l2)
    return EmbeddingHeads(categories, weights, bias, model)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, steps: int = 25) -> tuple[np.ndarray, float]:
    design = np.hstack([x, np.ones((len(x), 1))])
    theta = np.zeros(design.shape[1])
    penalty = np.full(design.shape[1], l2)
    penalty[-1] = 0.0  # the bias is not shrunk
    for _ in range(steps):
        p = sigmoid(design @ theta)
        gradient = design.T @ (p - y) + penalty * theta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty)
        step = np.linalg.solve(hessian + 1e-9 * np.eye(len(theta)), gradient)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    return theta[:-1], float(theta[-1])


def load_policy_and_heads(path: str | Path | None) -> tuple[Policy, EmbeddingHeads | None]:
    """The policy file at `path` (None: the shipped one) and the heads file it names, both
    checked: an unreadable or foreign heads file, or heads of categories the policy lacks, is a
    PolicyError (a configuration error, found before any job starts)."""
    policy = load_policy(path)
    return policy, policy_heads(policy)


def policy_heads(policy: Policy) -> EmbeddingHeads | None:
    """The heads file `policy` names (None when it names none), checked against the policy: the
    one place a policy's heads file is read."""
    if policy.heads is None:
        return None
    try:
        heads = EmbeddingHeads.load(policy.heads_path())
    except (OSError, ValueError) as e:
        raise PolicyError(f"policy {policy.source}: heads {policy.heads_path()}: {e}") from None
    unknown = set(heads.categories) - set(policy.names)
    if unknown:
        raise PolicyError(f"policy {policy.source}: its heads score categories it does not have: {sorted(unknown)}")
    return heads
