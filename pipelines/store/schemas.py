"""The tables' schemas: names, keys, and columns. `risk_<category>` columns follow the policy's
categories (`shoplens.encoders.rows.risk_column`); a table gains the columns it lacks, never loses one."""

from __future__ import annotations

import pyarrow as pa

from shoplens.encoders.rows import risk_column

ITEMS = "items"
FRAMES = "frames"
HASH_BANK = "hash_bank"
POLICIES = "policies"
LABELS = "labels"
CODEBOOKS = "codebooks"  # semantic-ID codebooks (encoders.codes), one row a version
# `note` (what was capped or cut short) and `frames` (the video's sampling) extend the design's columns.
METADATA_FIELDS = ("item_id", "kind", "title", "category", "seller_id", "media_uri", "media_sha256", "status", "error", "note", "frames")

# Safety columns besides `risk_<category>` (see safety.scorer): written as the scorer made them.
SAFETY_FIELDS = (
    pa.field("risk", pa.float32()),
    pa.field("decision", pa.string()),
    pa.field("safety_version", pa.string()),
    pa.field("safety_error", pa.string()),  # why an ok item is unscored
    pa.field("evidence_timestamp_s", pa.float32()),  # videos: the worst frame's time
    pa.field("risk_topk_mean", pa.float32()),
    pa.field("frames_over_review", pa.int32()),
    pa.field("hash_match", pa.string()),  # the hash-bank entry an item matched
    pa.field("signal_scores", pa.string()),  # JSON: each signal's raw outputs, for rescoring
    pa.field("text_match", pa.string()),  # JSON: what the policy's text rules matched, and where
)

# What OCR read (encoders.ocr): each line's text, confidence, box (four corners, x then y, as
# fractions of the picture's width and height) and the time of the frame it was read in.
OCR_LINE = pa.struct(
    [
        pa.field("text", pa.string()),
        pa.field("confidence", pa.float32()),
        pa.field("box", pa.list_(pa.float32(), 8)),
        pa.field("timestamp_s", pa.float32()),
    ]
)
# Semantic IDs (`shoplens codes`): an item's codes, coarse to fine, and the codebooks' version.
CODE_FIELDS = (pa.field("semantic_id", pa.list_(pa.int32())), pa.field("codes_version", pa.string()))
OCR_FIELDS = (
    pa.field("ocr_text", pa.string()),  # the item's distinct lines, in the order they first appear
    pa.field("ocr_lines", pa.list_(OCR_LINE)),
    pa.field("ocr_model", pa.string()),  # the reader and settings that read them (encoders.ocr.ocr_provenance)
)

TEXT_COLUMNS = ("title", "ocr_text")  # of `items`, full-text indexed: what keyword search matches

# Lance's unenforced primary key: a `merge_insert` on exactly these columns records the keys it
# inserts, and two writers inserting the same key conflict (the later one retries as an update)
# instead of both adding a row.
PRIMARY_KEY = "lance-schema:unenforced-primary-key"
KEYS = {ITEMS: ("item_id",), FRAMES: ("item_id", "frame_index"), HASH_BANK: ("entry_id",), LABELS: ("item_id", "category")}


def keyed(schema: pa.Schema, name: str) -> pa.Schema:
    """`schema` with table `name`'s key columns marked as its primary key (and not nullable)."""
    for column in KEYS[name]:
        i = schema.get_field_index(column)
        field = schema.field(i)
        schema = schema.set(i, field.with_nullable(False).with_metadata({**(field.metadata or {}), PRIMARY_KEY.encode(): b"true"}))
    return schema


def risk_fields(categories: list[str]) -> list[pa.Field]:
    return [pa.field(risk_column(c), pa.float32()) for c in categories]


def items_schema(dim: int, categories: list[str]) -> pa.Schema:
    vector = pa.list_(pa.float32(), dim)
    return keyed(
        pa.schema(
            [pa.field("item_id", pa.string(), nullable=False)]
            + [pa.field(name, pa.string()) for name in METADATA_FIELDS[1:]]
            + [
                pa.field("vector", vector),
                pa.field("text_vector", vector),
                pa.field("model", pa.string()),
                pa.field("updated_at", pa.timestamp("us", tz="UTC")),
                pa.field("pdq", pa.string()),  # products: the image's PDQ hash (videos: per frame)
                pa.field("pdq_quality", pa.int32()),
                # Near-duplicate groups (`shoplens dedup`): the group's smallest item_id and its size.
                pa.field("dup_group", pa.string()),
                pa.field("dup_count", pa.int32()),
            ]
            + risk_fields(categories)
            + list(SAFETY_FIELDS)
            + list(OCR_FIELDS)
            + list(CODE_FIELDS)
        ),
        ITEMS,
    )


def frames_schema(dim: int, categories: list[str]) -> pa.Schema:
    return keyed(
        pa.schema(
            [
                pa.field("item_id", pa.string(), nullable=False),
                pa.field("frame_index", pa.int64(), nullable=False),
                pa.field("timestamp_s", pa.float32()),
                pa.field("vector", pa.list_(pa.float32(), dim)),
                pa.field("model", pa.string()),
                pa.field("pdq", pa.string()),
                pa.field("pdq_quality", pa.int32()),
                pa.field("hash_match", pa.string()),
                pa.field("signal_scores", pa.string()),
                pa.field("ocr_lines", pa.list_(OCR_LINE)),
            ]
            + risk_fields(categories)
            + [pa.field("risk", pa.float32())]
        ),
        FRAMES,
    )
