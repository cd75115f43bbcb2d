"""The store: the only code that opens a LanceDB table. Tables are created and migrated here,
read through typed reads (no caller's value is ever pasted into SQL), and written in keyed,
batched commits: every LanceDB write makes a table version, and concurrent `merge_insert`s on
the same keys conflict.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from urllib.parse import urlparse

import pyarrow as pa

from shoplens.encoders.errors import UsageError
from shoplens.encoders.object_store import s3_endpoint, s3_region
from shoplens.encoders.rows import OK, risk_column
from shoplens.pipelines.store.schemas import (
    CODEBOOKS,
    FRAMES,
    HASH_BANK,
    ITEMS,
    KEYS,
    LABELS,
    POLICIES,
    PRIMARY_KEY,
    frames_schema,
    items_schema,
    keyed,
)
from shoplens.pipelines.store.snapshot import TableSnapshot

# What an unchanged item must match, besides its media bytes, to be skipped on a re-run.
SKIP_KEY_FIELDS = ("model", "kind", "title", "category", "seller_id", "media_uri", "frames")
# What `mark_unchanged` adds to each manifest row from an earlier run's row.
KNOWN_SCHEMA = pa.schema([(name, pa.string()) for name in ("item_id", "known_sha256", "known_status", "known_error")])
OPEN_ATTEMPTS = 3


class StoreError(UsageError):
    """The database cannot take this job: unreachable, missing a table, or of another model."""


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
        """Connects (a local database's folder is created): a policy file a command was given is
        read before, so that a bad one leaves no trace."""
        import lancedb

        self.uri = uri
        try:
            self.db = lancedb.connect(uri, storage_options=storage_options(uri))
        except (ValueError, OSError, RuntimeError) as e:
            raise self._unreachable(e) from e

    def schema(self, name: str = ITEMS) -> pa.Schema:
        """The schema of table `name`; a StoreError when the database has no such table."""
        return self._required(name).schema

    def has(self, name: str) -> bool:
        return self.existing(name) is not None

    def count(self, name: str, not_null: str | None = None) -> int:
        """Rows of table `name` (0 when there is none), or those whose column `not_null` is set."""
        table = self.existing(name)
        if table is None:
            return 0
        if not_null is None:
            return table.count_rows()
        if not_null not in table.schema.names:  # a column name, never a caller's text in SQL
            raise ValueError(f"table {name!r} has no column {not_null!r}")
        return table.count_rows(f"{not_null} IS NOT NULL")

    def read(self, name: str, columns: list[str], item_ids: list[str] | None = None, **equal) -> pa.Table:
        """`TableSnapshot.read` of table `name`'s newest version; an empty table when the database
        has no such table. A command that reads a table more than once takes a `snapshot`."""
        table = self.existing(name)
        return pa.table({}) if table is None else TableSnapshot(table).read(columns, item_ids, **equal)

    def scan(self, name: str, columns: list[str] | None = None, batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
        """Table `name` a batch at a time (memory stays flat however large it is): `columns` it has
        (all when None). Nothing when the database has no such table."""
        table = self.existing(name)
        if table is None:
            return
        present = None if columns is None else [c for c in columns if c in table.schema.names]
        yield from table.to_lance().to_batches(columns=present, batch_size=batch_rows)

    def model(self) -> str | None:
        """`embedding_model` of the newest `items` (None when there is no table)."""
        return embedding_model(self.snapshot(ITEMS)) if self.has(ITEMS) else None

    def snapshot(self, name: str = ITEMS) -> TableSnapshot:
        """One version of table `name`, for many reads; a StoreError when there is none."""
        return TableSnapshot(self._required(name))

    def _required(self, name: str):
        table = self.existing(name)
        if table is None:
            raise StoreError(f"{self.uri}: no {name!r} table; run `shoplens ingest` first")
        return table

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

        row = pa.table(
            {
                "version": [policy.version],
                "created_at": [dt.datetime.now(dt.timezone.utc)],
                "policy": [policy_yaml(policy)],
                "heads": pa.array([heads.to_bytes() if heads else None], pa.binary()),
                "report": [json.dumps(report)],
            }
        )
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

        if path is not None:
            return load_policy_and_heads(path)
        newest = self._newest_policy()
        if newest is None:
            return load_policy_and_heads(None)
        heads = EmbeddingHeads.from_bytes(newest["heads"]) if newest["heads"] else None
        return parse_policy(newest["policy"], f"{self.uri} ({POLICIES} table, version {newest['version']})"), heads

    def save_codebooks(self, books, fitted_on: int) -> None:
        """Stores a new version of the semantic-ID codebooks; the newest is the database's."""
        row = pa.table(
            {
                "version": [books.version],
                "created_at": [dt.datetime.now(dt.timezone.utc)],
                "model": [books.model],
                "levels": pa.array([books.levels], pa.int32()),
                "codebook_size": pa.array([books.size], pa.int32()),
                "fitted_on": pa.array([fitted_on], pa.int64()),
                "centroids": pa.array([books.to_bytes()], pa.binary()),
            }
        )
        table = self.existing(CODEBOOKS)
        if table is None:
            table = self.db.create_table(CODEBOOKS, schema=row.schema, exist_ok=True)
        table.add(row)

    def code_levels(self) -> int:
        """The most levels of any stored codebooks version (0 before any)."""
        table = self.existing(CODEBOOKS)
        return max(table.search().select(["levels"]).limit(None).to_arrow()["levels"].to_pylist(), default=0) if table else 0

    def codebooks(self, version: str | None = None):
        """The codebooks of `version`, or the newest; None when none was fitted (or no such version)."""
        from shoplens.encoders.codes import Codebooks

        table = self.existing(CODEBOOKS)
        if table is None:
            return None
        rows = table.search().select(["version", "created_at", "model", "centroids"]).limit(None).to_arrow()
        rows = rows.sort_by([("created_at", "descending")]).to_pylist()
        row = next((r for r in rows if version is None or r["version"] == version), None)
        return None if row is None else Codebooks.from_bytes(row["centroids"], row["model"], row["version"])

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

    def mark_unchanged(
        self, table, manifest: pa.Table, model: str, ocr_models: dict[str, str] | None = None, scan_rows: int = 65_536
    ) -> pa.Table:
        """Adds what earlier runs stored to the manifest rows, as three columns:

        `known_status`, `known_error`: the stored outcome of an item stored with the same model,
        the same OCR (`ocr_models`: kind -> `encoders.ocr.ocr_provenance`, absent where not read)
        and fields (null otherwise), so that a skipped item is counted as it was, and a failure
        that repeats itself exactly is not written again; `known_sha256`: the hash an unchanged
        item's bytes will match (set only where the manifest row itself is usable).

        The table is streamed in `scan_rows` batches and joined with the manifest in Arrow: the
        driver holds the manifest and one batch, never the whole table (which may be far larger).
        """
        import pyarrow.compute as pc

        known = [KNOWN_SCHEMA.empty_table()]
        stored = table.search().select(["item_id", "media_sha256", "status", "error", "ocr_model", *SKIP_KEY_FIELDS]).limit(None)
        ocr_models = ocr_models or {}
        wanted = manifest.select(["item_id", "status", *SKIP_KEY_FIELDS[1:]])
        for batch in stored.to_batches(scan_rows):
            old = pa.Table.from_batches([batch]).join(wanted, "item_id", join_type="inner", right_suffix="_new")
            same = pc.equal(old["model"], pa.scalar(model))
            ocr = pa.array([ocr_models.get(kind) for kind in old["kind"].to_pylist()], pa.string())
            # An ok item must have been read as OCR now reads its kind; a failed one was never read.
            same = pc.and_(same, pc.or_(pc.not_equal(old["status"], OK), _same_text(old["ocr_model"], ocr)))
            for name in SKIP_KEY_FIELDS[1:]:
                same = pc.and_(same, _same_text(old[name], old[f"{name}_new"]))
            old = old.filter(pc.fill_null(same, False))
            usable = pc.equal(old["status_new"], OK)
            known.append(
                pa.table(
                    [old["item_id"], pc.if_else(usable, old["media_sha256"], pa.scalar(None, pa.string())), old["status"], old["error"]],
                    schema=KNOWN_SCHEMA,
                )
            )
        return manifest.join(pa.concat_tables(known), "item_id", join_type="left outer")

    def upsert(self, table, rows: pa.Table) -> None:
        if rows.num_rows:
            # Nulls are how failed rows store "no vector"; NaNs were turned into errors upstream.
            self._committed(
                table,
                lambda t: (
                    t.merge_insert("item_id")
                    .when_matched_update_all()
                    .when_not_matched_insert_all()
                    .execute(rows.cast(keyed(rows.schema, ITEMS)), on_bad_vectors="null")
                ),
            )

    def _committed(self, table, commit) -> None:
        """`commit(table)`, done again on the table as it is now when another writer's commit made
        ours incompatible (a table another job created or migrated at the same moment): an upsert
        on keys lands the same however often it is done."""
        for attempt in range(OPEN_ATTEMPTS):
            try:
                commit(table)
                return
            except (OSError, RuntimeError, ValueError) as e:
                if attempt == OPEN_ATTEMPTS - 1 or not _concurrent(e):
                    raise
                table = self.db.open_table(table.name)

    def update_columns(self, table, rows: pa.Table, unchanged_since: str | None = None) -> None:
        """Sets the columns in `rows` (keyed by `item_id`) on existing items, in one commit; with
        `unchanged_since` (a column of `rows`), only on items whose value of it is still the one given."""
        if rows.num_rows:
            where = f"target.{unchanged_since} = source.{unchanged_since}" if unchanged_since else None  # our own column names
            table.merge_insert("item_id").when_matched_update_all(where=where).execute(rows.cast(keyed(rows.schema, ITEMS)))

    def block_items(self, matched: dict[str, str], categories: dict[str, str], block: str) -> None:
        """Marks stored items as matching the hash bank, in one commit: `matched` maps an item_id
        to the entry it matched, `categories` an entry to its category."""
        table = self._required(ITEMS)
        rows = self._matched_rows(
            table,
            ["item_id"],
            [(item_id,) for item_id in matched],
            [matched[i] for i in matched],
            [categories[matched[i]] for i in matched],
        )
        rows = rows.set_column(rows.schema.get_field_index("decision"), "decision", pa.array([block] * rows.num_rows, pa.string()))
        self.update_columns(table, rows)

    def block_frames(self, matches: pa.Table) -> None:
        """Marks stored frames (`matches`: item_id, frame_index, hash_match, category) as
        matching the hash bank, in one commit."""
        table = self._required(FRAMES)
        keys = list(zip(matches["item_id"].to_pylist(), matches["frame_index"].to_pylist()))
        rows = self._matched_rows(
            table, ["item_id", "frame_index"], keys, matches["hash_match"].to_pylist(), matches["category"].to_pylist()
        )
        table.merge_insert(["item_id", "frame_index"]).when_matched_update_all().execute(rows.cast(keyed(rows.schema, FRAMES)))

    @staticmethod
    def _matched_rows(table, key: list[str], keys: list[tuple], entries: list[str], categories: list[str]) -> pa.Table:
        """The stored rows of `keys` with `hash_match` set, and, where the row was scored, the
        matched category's risk and `risk` set to 1 (a match is certain). Only the key, decision,
        hash_match and risk columns."""
        from lancedb.expr import col

        columns = [*key, *(c for c in ("decision", "hash_match", "risk") if c in table.schema.names)]
        columns += sorted({risk_column(c) for c in categories} & set(table.schema.names))
        wanted = dict(zip(keys, zip(entries, categories)))
        stored = table.search().where(col(key[0]).isin(sorted({k[0] for k in keys}))).select(columns).limit(None).to_arrow()
        rows = [r for r in stored.to_pylist() if tuple(r[k] for k in key) in wanted]
        for row in rows:
            entry, category = wanted[tuple(row[k] for k in key)]
            row["hash_match"] = entry
            if row.get("risk") is not None and risk_column(category) in row:
                row[risk_column(category)] = row["risk"] = 1.0
        return pa.Table.from_pylist(rows, schema=stored.schema)

    def replace_frames(self, table, item_ids: list[str], rows: pa.Table) -> None:
        """Makes `rows` the only frames of `item_ids`, in one commit: frames an item no longer
        has (it was re-sampled, now fails, or is no longer a video) are deleted as the new ones
        are upserted. Writes nothing, and makes no table version, when there is nothing to do."""
        from lancedb.expr import col

        of_these = col("item_id").isin(item_ids)  # typed: item ids never become SQL text
        if not item_ids or (rows.num_rows == 0 and not table.search().where(of_these).select(["item_id"]).limit(1).to_list()):
            return
        self._committed(
            table,
            lambda t: (
                t.merge_insert(["item_id", "frame_index"])
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .when_not_matched_by_source_delete(of_these)
                .execute(rows.cast(keyed(rows.schema, FRAMES)))
            ),
        )


def embedding_model(items: TableSnapshot) -> str | None:
    """The one model the embedded items were made with (None before any); a StoreError for a
    table of mixed models, whose vectors cannot be compared."""
    models = set(items.read(["model"], status=OK)["model"].to_pylist())
    if len(models) > 1:
        raise StoreError(f"the table mixes models {sorted(models)}: re-ingest it with one model before searching")
    return next(iter(models), None)


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
    return any(
        words in text for words in ("incompatible transaction", "concurrent transaction", "commit conflict", "already exists", "retryable")
    )


def _same_text(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.ChunkedArray:
    """Element-wise equality of two text columns, where two nulls are the same (no title twice)."""
    import pyarrow.compute as pc

    return pc.or_(pc.fill_null(pc.equal(a, b), False), pc.and_(pc.is_null(a), pc.is_null(b)))
