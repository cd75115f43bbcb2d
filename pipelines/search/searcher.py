"""Vector search over the `items` table: by text, image, item or video, with metadata and safety filters.

Queries are embedded with the table's own model, read from its `model` provenance; a query
encoder that differs is refused. Filters are built with LanceDB's typed expressions, so no user
text is ever pasted into SQL.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from shoplens.encoders.clip import ClipEncoder, query_encoder
from shoplens.encoders.errors import UsageError
from shoplens.encoders.media import ImageLimits, MediaError, decode_image, read_media
from shoplens.encoders.rows import ALLOW, BLOCK, OK, PRODUCT, REVIEW, UNSCORED
from shoplens.encoders.weights import WeightsError
from shoplens.pipelines.store.database import ItemStore, StoreError, embedding_model
from shoplens.pipelines.store.indexes import QueryTuning
from shoplens.pipelines.store.schemas import FRAMES, ITEMS, TEXT_COLUMNS
from shoplens.pipelines.store.snapshot import TableSnapshot

FILTER_COLUMNS = ("status", "kind", "category", "seller_id", "risk", "decision")  # what `SearchFilters` reads
RESULT_COLUMNS = ("item_id", "kind", "title", "category", "seller_id", "media_uri", "risk", "decision", "dup_count")
FIELDS = {"image": "vector", "title": "text_vector"}  # what a query is compared with
RRF_K = 60  # reciprocal rank fusion: 1 / (RRF_K + rank); 60 is the value of the RRF paper


class SearchError(UsageError):
    """A query that cannot be answered as asked."""


@dataclass(frozen=True)
class SearchFilters:
    kind: str | None = None
    category: str | None = None
    seller_id: str | None = None
    max_risk: float | None = None  # unscored items (null risk) never pass: unscored is not safe
    include_blocked: bool = False
    include_unscored: bool = False  # for moderators: items no signal could score are hidden by default

    def __post_init__(self):
        risk = self.max_risk
        if risk is not None and (isinstance(risk, bool) or not isinstance(risk, numbers.Real) or not 0 <= risk <= 1):
            raise SearchError(f"--max-risk must be a number in [0, 1], not {self.max_risk!r}")

    def expression(self, dialect: str = "lancedb"):
        """The filter as a typed expression, never SQL text: LanceDB's (`lancedb`) or Arrow's
        (`arrow`, what a Lance dataset scan takes). Both read the same: SQL's null rules apply."""
        if dialect == "arrow":
            import pyarrow.compute as pc

            col, lit = pc.field, pc.scalar
        else:
            from lancedb.expr import col, lit

        where = col("status") == lit(OK)
        for name in ("kind", "category", "seller_id"):
            if getattr(self, name) is not None:
                where = where & (col(name) == lit(getattr(self, name)))
        if self.max_risk is not None:
            # Compared as float32, the column's own type: a float64 literal is refused by Substrait,
            # and 0.3 as float32 is the value a stored risk of 0.3 holds.
            where = where & (col("risk") <= _float32(dialect, self.max_risk))
        # Only decisions named here are shown: a row with no decision at all never is.
        shown = [ALLOW, REVIEW] + [BLOCK] * self.include_blocked + [UNSCORED] * self.include_unscored
        return where & col("decision").isin(shown)


def _float32(dialect: str, value: float):
    """`value` as a float32 literal of either dialect."""
    import pyarrow as pa

    if dialect == "arrow":
        import pyarrow.compute as pc

        return pc.scalar(pa.scalar(float(value), pa.float32()))
    from lancedb.expr import lit

    return lit(float(value)).cast(pa.float32())


class Searcher:
    """Opens a database's `items` table once; answers many queries. With `prewarm`, a process that
    will answer many copies the table into memory first and answers vector queries there."""

    def __init__(
        self, db: str, pretrained: str | None = None, device: str = "auto", tuning: QueryTuning = QueryTuning(), prewarm: bool = False
    ):
        self.store = ItemStore(db)
        try:
            self.snapshot = self.store.snapshot(ITEMS)
            self.model = embedding_model(self.snapshot)
        except StoreError as e:  # no table, or one of mixed models: nothing this query can search
            raise SearchError(str(e)) from None
        self.tuning = tuning
        self.columns = [c for c in RESULT_COLUMNS if c in self.snapshot.schema.names]  # a table from before `dup_count`
        # A warm process answers vector queries from memory (`search.memory_index`): each
        # Lance query costs milliseconds of planning and reads, whatever the table's size.
        self.memory = self._in_memory() if prewarm else None
        self.pretrained, self.device = pretrained, device
        self._encoder: ClipEncoder | None = None

    @property
    def encoder(self) -> ClipEncoder:
        """The query encoder, loaded on first use and checked against the table's model."""
        if self._encoder is None:
            if self.model is None:
                raise SearchError("the table holds no embedded item yet: nothing to search")
            try:
                self._encoder = query_encoder(self.model, self.pretrained, self.device)
            except WeightsError as e:
                raise SearchError(str(e)) from None
        return self._encoder

    @cached_property
    def frames(self) -> TableSnapshot | None:
        """The `frames` table as it was when first read (None when there is none)."""
        return self.store.snapshot(FRAMES) if self.store.has(FRAMES) else None

    def by_text(self, text: str, k: int = 10, filters: SearchFilters = SearchFilters(), field: str = "image") -> list[dict]:
        if not text.strip():
            raise SearchError("--text is empty")
        return self.nearest(self.encoder.encode_texts([text])[0], k, filters, field)

    def hybrid(self, text: str, k: int = 10, filters: SearchFilters = SearchFilters(), field: str = "image") -> list[dict]:
        """Vector hits for `text` and full-text hits on titles and picture text, fused by reciprocal rank: `score`
        is the fused score, and an item ranked by both lists comes before one ranked by either."""
        depth = max(2 * k, 20)  # candidates from each list
        return reciprocal_rank_fusion([self.by_text(text, depth, filters, field), self.by_keywords(text, depth, filters)], k)

    def by_keywords(self, text: str, k: int = 10, filters: SearchFilters = SearchFilters()) -> list[dict]:
        """Full-text (BM25) search of titles and of the text read in pictures (`ocr_text`, where
        indexed); `score` is the BM25 score."""
        if not self.snapshot.has_full_text_index("title"):
            raise SearchError("keyword search needs the full-text index on titles: run `shoplens index` first")
        searched = [c for c in TEXT_COLUMNS if self.snapshot.has_full_text_index(c)]
        hits = self.snapshot.matching(text, searched, k, self.columns, filters.expression())
        return [{"score": round(hit.pop("_score"), 6), **hit} for hit in hits]

    def by_image(self, path: str | Path, k: int = 10, filters: SearchFilters = SearchFilters()) -> list[dict]:
        try:
            pixels = decode_image(read_media(str(path), ImageLimits().max_bytes), self.encoder.image_size, name=str(path))
        except MediaError as e:
            raise SearchError(f"--image {path}: {e}") from None
        return self.nearest(self.encoder.encode_images(pixels[None])[0], k, filters)

    def by_item(self, item_id: str, k: int = 10, filters: SearchFilters = SearchFilters()) -> list[dict]:
        rows = self.snapshot.read(["vector", "status", "error"], item_ids=[item_id]).to_pylist()
        if not rows:
            raise SearchError(f"--item {item_id!r}: no such item")
        if rows[0]["vector"] is None:
            raise SearchError(f"--item {item_id!r} has no vector: it failed to ingest ({rows[0]['error']})")
        hits = self.nearest(np.asarray(rows[0]["vector"], np.float32), k + 1, filters)
        return [hit for hit in hits if hit["item_id"] != item_id][:k]

    def by_video(self, item_id: str, k: int = 10, filters: SearchFilters = SearchFilters(kind=PRODUCT)) -> list[dict]:
        """Shop the video: the items nearest to any of a video's frames, each with the time
        (`timestamp_s`) of the frame it matched best."""
        frames = self.frames.read(["vector", "timestamp_s"], item_ids=[item_id]).to_pylist() if self.frames else []
        if not frames:
            raise SearchError(f"--video {item_id!r}: no sampled frames (not an ingested video or live segment)")
        best: dict[str, dict] = {}
        for frame in frames:
            for hit in self.nearest(np.asarray(frame["vector"], np.float32), k + 1, filters):
                if hit["item_id"] != item_id and hit["score"] > best.get(hit["item_id"], {"score": -2.0})["score"]:
                    best[hit["item_id"]] = {**hit, "timestamp_s": round(float(frame["timestamp_s"]), 3)}
        return sorted(best.values(), key=lambda hit: -hit["score"])[:k]

    def _in_memory(self):
        """The opened version in memory: its vector columns (read one at a time), and its result
        and filter columns (a Lance `take` of 10 rows costs more than the search)."""
        from shoplens.pipelines.search.memory_index import MemorySnapshot

        vector_columns = ((column, self.snapshot.columns([column])[column]) for column in FIELDS.values())
        rows = self.snapshot.columns(list(dict.fromkeys([*self.columns, *FILTER_COLUMNS])))
        return MemorySnapshot(vector_columns, rows, self.columns, list(FILTER_COLUMNS))

    def nearest(self, vector: np.ndarray, k: int, filters: SearchFilters, field: str = "image") -> list[dict]:
        if k < 1:
            raise SearchError(f"-k must be at least 1, not {k}")
        if self.memory is not None and FIELDS[field] in self.memory.indexes:
            return self.memory.nearest(vector, k, filters, FIELDS[field], self.tuning.nprobes)
        hits = self.snapshot.nearest(self.nearest_query(vector, k, field), self.columns, filters.expression("arrow")).to_pylist()
        return [{"score": round(1.0 - hit.pop("_distance"), 6), **hit} for hit in hits]

    def nearest_query(self, vector: np.ndarray, k: int, field: str = "image") -> dict:
        """The Lance `nearest` argument for the k nearest to `vector` under this searcher's tuning."""
        column = FIELDS[field]
        query = {
            "column": column,
            "q": np.asarray(vector, np.float32),
            "k": k,
            "metric": "cosine",
            "nprobes": self.tuning.nprobes,
            "ef": self.tuning.ef,
        }  # ignored by an exact search
        refine = self.tuning.refine_for(self.snapshot.ann_index_type(column))
        return query | {"refine_factor": refine} if refine else query


def reciprocal_rank_fusion(rankings: list[list[dict]], k: int) -> list[dict]:
    """The top k of several ranked hit lists by the sum of 1 / (RRF_K + rank) over the lists."""
    fused: dict[str, dict] = {}
    for hits in rankings:
        for rank, hit in enumerate(hits, 1):
            entry = fused.setdefault(hit["item_id"], {**hit, "score": 0.0})
            entry["score"] += 1.0 / (RRF_K + rank)
    return sorted(fused.values(), key=lambda hit: -hit["score"])[:k]
