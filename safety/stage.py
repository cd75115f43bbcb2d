"""The model stage of ingest: embed, then score, in one process. The scorer needs the model's
text tower (for its prompt banks) and the decoded pixels (for its pixel models), both already
there; a stage of its own would ship every frame across processes again."""

from __future__ import annotations

import numpy as np

from shoplens.encoders.clip import ClipEmbedder, ClipSpec
from shoplens.safety.hashbank import HashBank
from shoplens.safety.heads import EmbeddingHeads
from shoplens.safety.policy import Policy
from shoplens.safety.scorer import SafetyScorer


class EmbedAndScore:
    def __init__(
        self,
        spec: ClipSpec,
        policy: Policy,
        bank: HashBank = HashBank(),
        num_threads: int | None = None,
        heads: EmbeddingHeads | None = None,
    ):
        # Pixels stay for the pixel models only: without them, what the GPU decoded never reaches the host.
        self.embedder = ClipEmbedder(spec, num_threads=num_threads, keep_pixels=bool(policy.pixel_models))
        encoder = self.embedder.encoder
        self.scorer = SafetyScorer(policy, encoder.encode_texts, encoder.provenance, bank, num_threads, heads, device=encoder.device)
        self.reads = (*self.embedder.reads, *(c for c in self.scorer.reads if c not in self.embedder.adds))
        self.adds = (*self.embedder.adds, *self.scorer.adds)
        # The pixel models' input, and the whole pictures OCR reads where no OCR stage took them: never shipped on.
        self.drops = (*self.embedder.drops, "pixels", "whole")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scored = self.scorer(self.embedder(batch))
        return {k: v for k, v in scored.items() if k not in self.drops}
