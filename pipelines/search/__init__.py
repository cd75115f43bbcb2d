"""Search: the Searcher (vector, hybrid, by item and by video), the in-memory index, near-duplicates."""
