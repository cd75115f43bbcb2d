"""One version of a table, opened once for many queries: what a search process reads."""

from __future__ import annotations

import pyarrow as pa


class TableSnapshot:
    """Vector, full-text and column reads of one table version. Vector queries go to the Lance
    dataset under the table: LanceDB's query builder costs a few milliseconds of Python and
    schema round trips per query, as much as the search itself."""

    def __init__(self, table):
        self._table = table
        self._dataset = table.to_lance()
        self.schema: pa.Schema = table.schema
        listed = table.list_indices()
        self.indexes: dict[tuple[str, ...], str] = {tuple(i.columns): i.index_type for i in listed}
        self._index_names = {tuple(i.columns): i.name for i in listed}

    def ann_index_type(self, column: str) -> str | None:
        """The type of `column`'s ANN index (IVF_PQ, ...), or None when it is searched exactly."""
        kind = self.indexes.get((column,))
        return kind if kind and kind.startswith("Ivf") else None

    def prewarm_ann_index(self, column: str) -> None:
        """Loads `column`'s ANN index into memory now, not on the first query."""
        self._dataset.prewarm_index(self._index_names[(column,)])

    def has_full_text_index(self, column: str) -> bool:
        return self.indexes.get((column,)) == "FTS"

    def columns(self, names: list[str]) -> pa.Table:
        """Whole columns of this version."""
        return self._dataset.to_table(columns=names)

    def nearest(self, query: dict, columns: list[str], where, with_distance: bool = True) -> pa.Table:
        """Rows nearest to `query` (Lance's `nearest` argument) passing `where` (an Arrow
        expression, applied before the search), with their cosine `_distance` unless not wanted."""
        if with_distance:
            return self._dataset.to_table(nearest=query, columns=[*columns, "_distance"], filter=where, prefilter=True)
        return self._dataset.to_table(nearest=query, columns=columns, filter=where, prefilter=True, disable_scoring_autoprojection=True)

    def matching(self, text: str, column: str, k: int, columns: list[str], where) -> list[dict]:
        """The `k` rows whose `column` best matches the terms of `text` (BM25, `_score`), passing
        `where` (a LanceDB expression). The text is terms to match, never query syntax or SQL."""
        from lancedb.query import MatchQuery

        query = self._table.search(MatchQuery(text, column)).where(where, prefilter=True)
        return query.select([*columns, "_score"]).limit(k).to_list()
