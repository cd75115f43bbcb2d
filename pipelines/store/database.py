"""The LanceDB store: the `items` schema, what earlier runs wrote, and keyed upserts.

One writer, in large batches: every LanceDB write makes a table version, and concurrent
`merge_insert`s on the same keys conflict.
"""

from __future__ import annotations

import datetime as dt
import json
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa

from shoplens.encoders.media import OK, text_or_none
from shoplens.encoders.object_store import s3_endpoint, s3_region

ITEMS = "items"
FRAMES = "frames"
HASH_BANK = "hash_bank"
POLICIES = "policies"
LABELS = "labels"
VIDEO_KINDS = ("video", "live")
UNSCORED = "unscored"
# What an unchanged item must match, besides its media bytes, to be skipped on a re-run.
SKIP_KEY_FIELDS = ("model", "kind", "title", "category", "seller_id", "media_uri", "frames")
# `note` (what was capped or cut short) and `frames` (the video's sampling) extend the design's columns.
METADATA_FIELDS = (
    "item_id", "kind", "title", "category", "seller_id", "media_uri", "media_sha256", "status", "error", "note", "frames",
)
# What `mark_unchanged` adds to each manifest row from an earlier run's row.
KNOWN_SCHEMA = pa.schema([(name, pa.string()) for name in ("item_id", "known_sha256", "known_status", "known_error")])


class StoreError(RuntimeError):
    """The database cannot take this job (a configuration error: exit code 2)."""


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
)


OPEN_ATTEMPTS = 3
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
    return [pa.field(f"risk_{c}", pa.float32()) for c in categories]


def items_schema(dim: int, categories: list[str]) -> pa.Schema:
    vector = pa.list_(pa.float32(), dim)
    return keyed(pa.schema(
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
    ), ITEMS)


def frames_schema(dim: int, categories: list[str]) -> pa.Schema:
    return keyed(pa.schema(
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
        ]
        + risk_fields(categories)
        + [pa.field("risk", pa.float32())]
    ), FRAMES)


def storage_options(uri: str) -> dict[str, str]:
    """LanceDB's options for `uri` from the environment: an S3-compatible server's endpoint (plain
    http allowed only when the endpoint says http) and region. Credentials stay in the environment,
    where LanceDB, like every AWS and Google client, finds them itself."""
    if urlparse(uri).scheme.lower() != "s3":
        return {}
    options = {"aws_region": s3_region()} if s3_region() else {}
    endpoint = s3_endpoint()
    if endpoint:
        options |= {"aws_endpoint": endpoint, "allow_http": str(endpoint.lower().startswith("http://")).lower()}
    return options


class ItemStore:
    def __init__(self, uri: str):
        import lancedb

        self.uri = uri
        try:
            self.db = lancedb.connect(uri, storage_options=storage_options(uri))
        except (ValueError, OSError, RuntimeError) as e:
            raise self._unreachable(e) from e

    def items(self, dim: int, categories: list[str]):
        """The `items` table, created if missing; refuses a table of another vector size."""
        return self._table(ITEMS, items_schema(dim, categories))

    def frames(self, dim: int, categories: list[str]):
        """The `frames` table (one row per sampled video frame), created if missing."""
        return self._table(FRAMES, frames_schema(dim, categories))

    def existing(self, name: str):
        """The table called `name`, or None when the database has none."""
        try:
            return self.db.open_table(name)
        except (ValueError, OSError, RuntimeError) as e:
            if f"{name!r} was not found" in str(e):
                return None
            raise self._unreachable(e) from e

    def _unreachable(self, error: Exception) -> StoreError:
        # An unreachable endpoint, refused credentials, no such bucket: a configuration error.
        return StoreError(
            f"{self.uri}: cannot open the database: {error}; check the URI, the credentials in the environment "
            "and, for an S3-compatible server, AWS_ENDPOINT_URL"
        )

    def _table(self, name: str, schema: pa.Schema):
        """Opens (or creates) and migrates table `name`. Another job may be doing the same at the
        same moment: a commit of its that conflicts with ours is met by opening the table again."""
        for attempt in range(OPEN_ATTEMPTS):
            try:
                return self._open_and_migrate(name, schema)
            except (OSError, RuntimeError, ValueError) as e:
                if attempt == OPEN_ATTEMPTS - 1 or not _concurrent(e):
                    raise

    def _open_and_migrate(self, name: str, schema: pa.Schema):
        table = self.existing(name)
        if table is None:  # another job may be creating it at the same moment: then that one is opened
            table = self.db.create_table(name, schema=schema, exist_ok=True)
        table = self._with_primary_key(table, name)
        stored, wanted = (table.schema.field("vector").type, schema.field("vector").type) if "vector" in schema.names else (None, None)
        if stored != wanted:
            raise StoreError(
                f"{self.uri}: table {name!r} holds {stored} vectors, but this model makes {wanted.list_size}-d ones; "
                "use another --db, or the model the table was built with"
            )
        # A table from an earlier version, or an earlier policy with fewer categories, gains the
        # missing columns, all null (a metadata-only change); columns are never renamed or dropped.
        missing = [f for f in schema if f.name not in table.schema.names]
        if missing:
            table.add_columns(missing)
        return table

    def _with_primary_key(self, table, name: str):
        """`table`, its key marked as Lance's primary key if a version before that left it unmarked.
        A key, once marked, cannot change: all its columns are marked in one step."""
        unmarked = [c for c in KEYS[name] if PRIMARY_KEY.encode() not in (table.schema.field(c).metadata or {})]
        if not unmarked:
            return table
        if len(unmarked) < len(KEYS[name]):
            raise StoreError(f"{self.uri}: table {name!r} has a primary key other than {KEYS[name]}")
        _drop_duplicate_keys(table, KEYS[name])
        nullable = [c for c in KEYS[name] if table.schema.field(c).nullable]
        if nullable:  # a table made from data (older labels and banks): its keys hold no null
            table.alter_columns(*({"path": c, "nullable": False} for c in nullable))
        table.to_lance().update_field_metadata({c: {PRIMARY_KEY: "true"} for c in KEYS[name]})
        return self.db.open_table(name)

    def hash_bank(self):
        """The bank of known violating media's PDQ hashes (empty when none was added)."""
        from shoplens.safety.hashbank import HashBank

        table = self.existing(HASH_BANK)
        if table is None:
            return HashBank()
        rows = table.search().select(["entry_id", "category", "pdq"]).limit(None).to_arrow()
        return HashBank(rows["entry_id"].to_pylist(), rows["category"].to_pylist(), rows["pdq"].to_pylist())

    def add_to_bank(self, rows: pa.Table) -> None:
        """Upserts bank entries (keyed by `entry_id`, the file's checksum): adding a file twice is a no-op."""
        self._create_or_upsert(HASH_BANK, rows, ["entry_id"])

    def upsert_labels(self, rows: pa.Table) -> None:
        """Reviewers' labels, keyed by (item_id, category): one commit, so an import lands whole."""
        self._create_or_upsert(LABELS, rows, ["item_id", "category"])

    def _create_or_upsert(self, name: str, rows: pa.Table, keys: list[str]) -> None:
        rows = rows.cast(keyed(rows.schema, name))
        table = self._table(name, rows.schema)
        table.merge_insert(keys).when_matched_update_all().when_not_matched_insert_all().execute(rows)

    def save_policy(self, policy, heads, report: dict) -> None:
        """Stores a (calibrated) policy version with its heads; the newest is the database's policy."""
        from shoplens.safety.policy import policy_yaml

        row = pa.table({
            "version": [policy.version], "created_at": [dt.datetime.now(dt.timezone.utc)], "policy": [policy_yaml(policy)],
            "heads": pa.array([heads.to_bytes() if heads else None], pa.binary()), "report": [json.dumps(report)],
        })
        table = self.existing(POLICIES)
        if table is None:  # two first jobs may create it at once: the later one opens it
            table = self.db.create_table(POLICIES, schema=row.schema, exist_ok=True)
        table.add(row)

    def policy(self, path=None):
        """(policy, heads) to score with: the file at `path`, with the heads file it names (read
        and checked here: a bad one is a PolicyError before any job starts); else the newest
        policy stored in the database (by an ingest or rescore given a file, or by `shoplens
        safety calibrate`), with its heads; else the shipped one."""
        from shoplens.safety.heads import EmbeddingHeads, load_policy_and_heads
        from shoplens.safety.policy import parse_policy

        newest = self._newest_policy()
        if path is None and newest is not None:
            heads = EmbeddingHeads.from_bytes(newest["heads"]) if newest["heads"] else None
            return parse_policy(newest["policy"], f"{self.uri} ({POLICIES} table, version {newest['version']})"), heads
        return load_policy_and_heads(path)

    def remember_policy(self, policy, heads) -> bool:
        """Stores the policy a job was given, unless it is already the database's newest: later
        commands then read the database with the policy that built it. Returns whether it stored."""
        from shoplens.safety.policy import policy_yaml

        newest = self._newest_policy()
        stored_heads = heads.to_bytes() if heads else None
        if newest is not None and newest["policy"] == policy_yaml(policy) and newest["heads"] == stored_heads:
            return False
        self.save_policy(policy, heads, {"command": "policy given to a job", "source": policy.source})
        return True

    def _newest_policy(self) -> dict | None:
        table = self.existing(POLICIES)
        if table is None or table.count_rows() == 0:
            return None
        rows = table.search().select(["version", "created_at", "policy", "heads"]).limit(None).to_arrow()
        return rows.sort_by([("created_at", "descending")]).slice(0, 1).to_pylist()[0]

    def mark_unchanged(self, table, manifest: pa.Table, model: str, scan_rows: int = 65_536) -> pa.Table:
        """Adds what earlier runs stored to the manifest rows, as three columns:

        `known_status`, `known_error`: the stored outcome of an item stored with the same model
        and fields (null otherwise), so that a skipped item is counted as it was, and a failure
        that repeats itself exactly is not written again; `known_sha256`: the hash an unchanged
        item's bytes will match (set only where the manifest row itself is usable).

        The table is streamed in `scan_rows` batches and joined with the manifest in Arrow: the
        driver holds the manifest and one batch, never the whole table (which may be far larger).
        """
        import pyarrow.compute as pc

        known = [KNOWN_SCHEMA.empty_table()]
        stored = table.search().select(["item_id", "media_sha256", "status", "error", *SKIP_KEY_FIELDS]).limit(None)
        wanted = manifest.select(["item_id", "status", *SKIP_KEY_FIELDS[1:]])
        for batch in stored.to_batches(scan_rows):
            old = pa.Table.from_batches([batch]).join(wanted, "item_id", join_type="inner", right_suffix="_new")
            same = pc.equal(old["model"], pa.scalar(model))
            for name in SKIP_KEY_FIELDS[1:]:
                same = pc.and_(same, _same_text(old[name], old[f"{name}_new"]))
            old = old.filter(pc.fill_null(same, False))
            usable = pc.equal(old["status_new"], OK)
            known.append(pa.table(
                [old["item_id"], pc.if_else(usable, old["media_sha256"], pa.scalar(None, pa.string())), old["status"], old["error"]],
                schema=KNOWN_SCHEMA,
            ))
        return manifest.join(pa.concat_tables(known), "item_id", join_type="left outer")

    def upsert(self, table, rows: pa.Table) -> None:
        if rows.num_rows:
            # Nulls are how failed rows store "no vector"; NaNs were turned into errors upstream.
            (
                table.merge_insert("item_id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(rows.cast(keyed(rows.schema, ITEMS)), on_bad_vectors="null")
            )

    def update_columns(self, table, rows: pa.Table) -> None:
        """Sets the columns in `rows` (keyed by `item_id`) on existing items, in one commit."""
        if rows.num_rows:
            table.merge_insert("item_id").when_matched_update_all().execute(rows.cast(keyed(rows.schema, ITEMS)))

    def block_items(self, table, matched: dict[str, str], categories: dict[str, str], block: str) -> None:
        """Marks stored items as matching the hash bank, in one commit: `matched` maps an item_id
        to the entry it matched, `categories` an entry to its category."""
        rows = self._matched_rows(table, ["item_id"], [(item_id,) for item_id in matched], [matched[i] for i in matched],
                                  [categories[matched[i]] for i in matched])
        rows = rows.set_column(rows.schema.get_field_index("decision"), "decision", pa.array([block] * rows.num_rows, pa.string()))
        self.update_columns(table, rows)

    def block_frames(self, table, matches: pa.Table) -> None:
        """Marks stored frames (`matches`: item_id, frame_index, hash_match, category) as
        matching the hash bank, in one commit."""
        keys = list(zip(matches["item_id"].to_pylist(), matches["frame_index"].to_pylist()))
        rows = self._matched_rows(table, ["item_id", "frame_index"], keys, matches["hash_match"].to_pylist(),
                                  matches["category"].to_pylist())
        table.merge_insert(["item_id", "frame_index"]).when_matched_update_all().execute(rows.cast(keyed(rows.schema, FRAMES)))

    @staticmethod
    def _matched_rows(table, key: list[str], keys: list[tuple], entries: list[str], categories: list[str]) -> pa.Table:
        """The stored rows of `keys` with `hash_match` set, and, where the row was scored, the
        matched category's risk and `risk` set to 1 (a match is certain). Only the key, decision,
        hash_match and risk columns."""
        from lancedb.expr import col

        columns = [*key, *(c for c in ("decision", "hash_match", "risk") if c in table.schema.names)]
        columns += sorted({f"risk_{c}" for c in categories} & set(table.schema.names))
        wanted = dict(zip(keys, zip(entries, categories)))
        stored = table.search().where(col(key[0]).isin(sorted({k[0] for k in keys}))).select(columns).limit(None).to_arrow()
        rows = [r for r in stored.to_pylist() if tuple(r[k] for k in key) in wanted]
        for row in rows:
            entry, category = wanted[tuple(row[k] for k in key)]
            row["hash_match"] = entry
            if row.get("risk") is not None and f"risk_{category}" in row:
                row[f"risk_{category}"] = row["risk"] = 1.0
        return pa.Table.from_pylist(rows, schema=stored.schema)

    def replace_frames(self, table, item_ids: list[str], rows: pa.Table) -> None:
        """Makes `rows` the only frames of `item_ids`, in one commit: frames an item no longer
        has (it was re-sampled, now fails, or is no longer a video) are deleted as the new ones
        are upserted. Writes nothing, and makes no table version, when there is nothing to do."""
        from lancedb.expr import col

        of_these = col("item_id").isin(item_ids)  # typed: item ids never become SQL text
        if not item_ids or (rows.num_rows == 0 and not table.search().where(of_these).select(["item_id"]).limit(1).to_list()):
            return
        (
            table.merge_insert(["item_id", "frame_index"])
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(of_these)
            .execute(rows.cast(keyed(rows.schema, FRAMES)))
        )


def _drop_duplicate_keys(table, key: tuple[str, ...]) -> None:
    """Heals a table that concurrent writers of an earlier version left with several rows for one
    key: the most recently written (`updated_at`, else the last stored) stays, in one commit."""
    import pyarrow.compute as pc

    dataset = table.to_lance()
    order = [c for c in ("updated_at",) if c in table.schema.names]
    rows = dataset.to_table(columns=[*key, *order], with_row_id=True)
    counts = rows.group_by(list(key)).aggregate([("_rowid", "count")])
    if pc.max(counts["_rowid_count"]).as_py() in (None, 1):
        return
    ranked = rows.sort_by([*((c, "ascending") for c in key), *((c, "descending") for c in order), ("_rowid", "descending")])
    keys = list(zip(*(ranked[c].to_pylist() for c in key)))
    ids = ranked["_rowid"].to_pylist()
    extra = [row_id for n, row_id in enumerate(ids) if n and keys[n] == keys[n - 1]]
    for start in range(0, len(extra), 10_000):
        dataset.delete(f"_rowid IN ({', '.join(map(str, extra[start : start + 10_000]))})")


def _concurrent(error: Exception) -> bool:
    """Whether `error` is another writer's commit getting in first (worth opening again)."""
    text = str(error).lower()
    return any(words in text for words in ("incompatible transaction", "concurrent transaction", "commit conflict",
                                           "already exists", "retryable"))


def frame_rows(batch: dict[str, np.ndarray], schema: pa.Schema, categories: list[str]) -> pa.Table:
    """One row per sampled frame of each embedded video or live segment, with its risks:
    `frame_risks` [F, C] are in the order of `categories` (the scoring policy's), and go to their
    columns by name; a column of a category the policy does not have is null."""
    dim = schema.field("vector").type.list_size
    risk_names = [f"risk_{c}" for c in categories]
    columns = {"item_id": [], "frame_index": [], "timestamp_s": [], "model": [], "pdq": [], "pdq_quality": [], "hash_match": [],
               "signal_scores": []}
    vectors, risks = [], []
    for i in np.flatnonzero((batch["status"] == OK) & np.isin(batch["kind"], VIDEO_KINDS)):
        count = len(batch["frame_index"][i])
        columns["item_id"] += [batch["item_id"][i]] * count
        columns["frame_index"] += list(batch["frame_index"][i])
        columns["timestamp_s"] += list(batch["timestamp_s"][i])
        columns["model"] += [batch["model"][i]] * count
        columns["pdq"] += list(batch["pdq"][i])
        columns["pdq_quality"] += [None if q < 0 else int(q) for q in batch["pdq_quality"][i]]
        columns["hash_match"] += list(batch["frame_hash_match"][i])
        columns["signal_scores"] += list(batch["frame_signal_scores"][i])
        vectors.append(np.asarray(batch["frame_vectors"][i], np.float32).reshape(-1, dim))
        risks.append(np.asarray(batch["frame_risks"][i], np.float32).reshape(-1, len(risk_names)))
    n = len(columns["item_id"])
    vectors = np.concatenate(vectors) if n else np.zeros((0, dim), np.float32)
    risks = np.concatenate(risks) if n else np.zeros((0, len(risk_names)), np.float32)
    columns |= {name: _floats(risks[:, k]) for k, name in enumerate(risk_names)}
    columns |= {f.name: pa.nulls(n, f.type) for f in schema if f.name.startswith("risk_") and f.name not in columns}
    with np.errstate(invalid="ignore"):
        columns["risk"] = _floats(risks.max(axis=1) if risk_names else np.full(n, np.nan))
    return pa.table({**columns, "vector": _vectors(vectors, np.ones(n, bool), dim)}, schema=schema)


def item_rows(batch: dict[str, np.ndarray], schema: pa.Schema, categories: list[str] | None = None) -> pa.Table:
    """Embedded and scored rows (the model stage's output batch) as `items` rows: vectors null
    unless embedded, safety columns as the scorer left them (null and `unscored` without it).
    `risk_<c>` of a category not in `categories` (the scoring policy's) is null, whatever the
    batch carries: a rescored row keeps no risk its policy no longer has."""
    ok = np.asarray(batch["status"] == OK)
    titled = ok & np.array([text_or_none(t) is not None for t in batch["title"]], dtype=bool)
    n = len(ok)
    dim = schema.field("vector").type.list_size
    columns = {name: _strings(batch[name]) for name in METADATA_FIELDS}
    columns["vector"] = _vectors(batch["vector"], ok, dim)
    columns["text_vector"] = _vectors(batch["text_vector"], titled, dim)
    columns["model"] = _strings(batch["model"])
    columns["updated_at"] = pa.array([dt.datetime.now(dt.timezone.utc)] * n, pa.timestamp("us", tz="UTC"))
    if "pdq" in batch:  # fingerprinted: a product's hash is its one frame's
        first = [kind == "product" and len(h) > 0 for kind, h in zip(batch["kind"], batch["pdq"])]
        columns["pdq"] = _strings([h[0] if f else None for f, h in zip(first, batch["pdq"])])
        columns["pdq_quality"] = _column(np.array([q[0] if f else -1 for f, q in zip(first, batch["pdq_quality"])]), pa.int32())
    safety_names = {f.name for f in SAFETY_FIELDS}
    current = None if categories is None else {f"risk_{c}" for c in categories}
    for field in schema:
        if field.name.startswith("risk") or field.name in safety_names:
            stale = current is not None and field.name.startswith("risk_") and field.name not in safety_names | current
            values = None if stale else batch.get(field.name)
            columns[field.name] = pa.nulls(n, field.type) if values is None else _column(values, field.type)
    if "decision" not in batch:
        columns["decision"] = pa.array([UNSCORED] * n, pa.string())
    # Columns other commands fill (dedup, ...): kept when the batch carries them (a rescore of
    # stored rows), else null (a re-ingested item is a new item).
    missing = [f for f in schema if f.name not in columns]
    columns |= {f.name: pa.array(list(batch[f.name]), f.type) if f.name in batch else pa.nulls(n, f.type) for f in missing}
    return pa.table(columns, schema=schema)


def _same_text(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.ChunkedArray:
    """Element-wise equality of two text columns, where two nulls are the same (no title twice)."""
    import pyarrow.compute as pc

    return pc.or_(pc.fill_null(pc.equal(a, b), False), pc.and_(pc.is_null(a), pc.is_null(b)))


def _vectors(values: np.ndarray, present: np.ndarray, dim: int) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(~present))


def _strings(values) -> pa.Array:
    return pa.array([text_or_none(v) for v in values], pa.string())


def _floats(values: np.ndarray) -> pa.Array:
    """NaN (not scored) becomes null: a missing score must never read as a number."""
    values = np.asarray(values, np.float32)
    return pa.array(values, pa.float32(), mask=~np.isfinite(values))


def _column(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    if pa.types.is_floating(type_):
        return _floats(values)
    if pa.types.is_integer(type_):
        values = np.asarray(values, np.int64)
        return pa.array(values, type_, mask=values < 0)  # -1: not counted
    return _strings(values)


class PendingWrites:
    """Rows waiting for the one writer, committed in batches of at most `commit_rows` items."""

    def __init__(self, store: ItemStore, items, frames, commit_rows: int, categories: list[str]):
        self.store, self.items, self.frames, self.commit_rows = store, items, frames, commit_rows
        self.categories = list(categories)  # the scoring policy's, in the order of its `frame_risks`
        self.item_rows: list[pa.Table] = []
        self.frame_rows: list[pa.Table] = []
        self.rows = 0

    def add(self, batch: dict[str, np.ndarray]) -> None:
        self.item_rows.append(item_rows(batch, self.items.schema, self.categories))
        self.frame_rows.append(frame_rows(batch, self.frames.schema, self.categories))
        self.rows += len(batch["item_id"])

    def flush(self) -> int:
        import pyarrow.compute as pc

        if not self.rows:
            return 0
        items, frames = pa.concat_tables(self.item_rows), pa.concat_tables(self.frame_rows)
        for start in range(0, items.num_rows, self.commit_rows):
            chunk = items.slice(start, self.commit_rows)
            # Frames first: a crash between the two commits then leaves items that a re-run
            # redoes, never an item marked done whose frames are missing.
            chunk_frames = frames.filter(pc.is_in(frames["item_id"], value_set=chunk["item_id"]))
            self.store.replace_frames(self.frames, chunk["item_id"].to_pylist(), chunk_frames)
            self.store.upsert(self.items, chunk)
        written, self.rows = self.rows, 0
        self.item_rows.clear()
        self.frame_rows.clear()
        return written
