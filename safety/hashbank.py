"""A bank of known violating media by PDQ hash: a frame whose hash lies within the policy's
Hamming distance of an entry (both of sufficient quality) matches it, and a match blocks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shoplens.encoders.phash import hamming, hash_bytes
from shoplens.safety.policy import HashBankPolicy


@dataclass(frozen=True)
class HashBank:
    entry_ids: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)  # 64 hex digits each

    def without(self, entry_ids: list[str]) -> HashBank:
        """The entries not in `entry_ids` (those added since a bank was read)."""
        known = set(entry_ids)
        keep = [k for k, e in enumerate(self.entry_ids) if e not in known]
        return HashBank([self.entry_ids[k] for k in keep], [self.categories[k] for k in keep], [self.hashes[k] for k in keep])

    def match(self, hashes: list[str | None], qualities: np.ndarray, rules: HashBankPolicy) -> tuple[np.ndarray, np.ndarray]:
        """For each hash: the index of the nearest matching entry (-1: none) and its distance.
        Hashes that are missing or of low quality never match: a flat frame matches too much."""
        found = np.full(len(hashes), -1, np.int64)
        distance = np.full(len(hashes), -1, np.int64)
        usable = np.array([h is not None for h in hashes], bool) & (np.asarray(qualities) >= rules.min_quality)
        if not self.entry_ids or not usable.any():
            return found, distance
        rows = np.flatnonzero(usable)
        distances = hamming(hash_bytes([hashes[i] for i in rows]), hash_bytes(self.hashes))  # [R, M]
        nearest = distances.argmin(axis=1)
        best = distances[np.arange(len(rows)), nearest]
        hit = best <= rules.max_distance
        found[rows[hit]], distance[rows[hit]] = nearest[hit], best[hit]
        return found, distance
