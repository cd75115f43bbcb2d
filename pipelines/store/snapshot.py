"""One version of a table, opened once for many reads: a search process's, or one command's that
must see a single state of the table however long it runs."""

from __future__ import annotations

import pyarrow as pa

READ_IDS = 1024  # item ids per typed `isin` read


class TableSnapshot:
    """Column, vector and full-text reads of one table version; what others commit meanwhile is
    not seen. Vector queries go to the Lance dataset under the table: LanceDB's query builder
    costs a few milliseconds of Python and schema round trips per query, as much as the search."""

    def __init__(self, table):
        self._table = table
        self._dataset = table.to_lance()
        self.schema: pa.Schema = table.schema
        self._indexes: list | None = None

    def _listed(self) -> list:
        if self._indexes is None:
            self._indexes = list(self._table.list_indices())
        return self._indexes

    def _ann_index(self, column: str):
        return next((i for i in self._listed() if i.columns == [column] and i.index_type.startswith("Ivf")), None)

    def ann_index_type(self, column: str) -> str | None:
        """The type of `column`'s ANN index (IVF_PQ, ...), or None when it is searched exactly."""
        index = self._ann_index(column)
        return index and index.index_type

    def prewarm_ann_index(self, column: str) -> None:
        """Loads `column`'s ANN index into memory now, not on the first query."""
        self._dataset.prewarm_index(self._ann_index(column).name)

    def has_full_text_index(self, column: str) -> bool:
        return any(i.columns == [column] and i.index_type == "FTS" for i in self._listed())

    def read(self, columns: list[str], item_ids: list[str] | None = None, **equal) -> pa.Table:
        """The `columns` this version has (an older table lacks some), of the rows whose `item_id`
        is one of `item_ids` (when given) and whose columns in `equal` hold the value given (a
        list: one of its values). Typed expressions: no value is ever pasted into SQL."""
        import pyarrow.compute as pc

        present = [c for c in dict.fromkeys(columns) if c in self.schema.names]
        where = None
        for column, value in equal.items():
            term = pc.field(column).isin(list(value)) if isinstance(value, (list, tuple)) else pc.field(column) == pc.scalar(value)
            where = term if where is None else where & term
        if item_ids is None:
            return self._dataset.to_table(columns=present, filter=where)
        ids = list(dict.fromkeys(item_ids))
        parts = [pa.schema([self.schema.field(c) for c in present]).empty_table()]
        for start in range(0, len(ids), READ_IDS):
            term = pc.field("item_id").isin(ids[start : start + READ_IDS])
            parts.append(self._dataset.to_table(columns=present, filter=term if where is None else where & term))
        return pa.concat_tables(parts)

    def columns(self, names: list[str]) -> pa.Table:
        """Whole columns of this version."""
        return self._dataset.to_table(columns=names)

    def nearest(self, query: dict, columns: list[str], where, with_distance: bool = True) -> pa.Table:
        """Rows nearest to `query` (Lance's `nearest` argument) passing `where` (an Arrow
        expression, applied before the search), with their cosine `_distance` unless not wanted."""
        if with_distance:
            return self._dataset.to_table(nearest=query, columns=[*columns, "_distance"], filter=where, prefilter=True)
        return self._dataset.to_table(nearest=query, columns=columns, filter=where, prefilter=True, disable_scoring_autoprojection=True)

    def matching(self, text: str, searched: list[str], k: int, columns: list[str], where) -> list[dict]:
        """The `k` rows whose `searched` columns best match the terms of `text` (BM25, `_score`),
        passing `where` (a LanceDB expression). The text is terms to match, never query syntax or SQL."""
        from lancedb.query import MatchQuery, MultiMatchQuery

        match = MatchQuery(text, searched[0]) if len(searched) == 1 else MultiMatchQuery(text, searched)
        query = self._table.search(match).where(where, prefilter=True)
        return query.select([*columns, "_score"]).limit(k).to_list()
