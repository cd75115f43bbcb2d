"""The manifest: one row per item, from CSV, JSON Lines or Parquet, checked and resolved.

Problems with a single row (bad kind, missing media, a path outside the media root) become that
row's `status`/`error`; problems with the whole file (unreadable, no `item_id` column) raise
ManifestError. Rows that cannot even be keyed (no or duplicate `item_id`) are returned apart as
`rejected`, so the summary reports them.
"""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow as pa

from shoplens.encoders.errors import UsageError
from shoplens.encoders.object_store import REMOTE_SCHEMES, filesystem_for, is_remote
from shoplens.encoders.rows import ERROR, KINDS, OK, PRODUCT
from shoplens.encoders.video import DEFAULT_SAMPLING, FrameSampling

log = logging.getLogger(__name__)

# A title is read by every text rule: one of megabytes would hold up its whole batch.
MAX_TITLE_CHARS = 4096
COLUMNS = ("item_id", "kind", "title", "image", "video", "category", "seller_id", "frames")
REQUIRED = ("item_id", "kind")


class ManifestError(UsageError):
    """The manifest as a whole cannot be used."""


@dataclass
class Manifest:
    rows: pa.Table  # item_id, kind, title, category, seller_id, media_uri, frames, status, error
    rejected: list[dict] = field(default_factory=list)  # {"row": n, "item_id": ..., "error": ...}
    root: str | None = None  # the media root rows were resolved against: a local folder, or a remote prefix


def read_manifest(path: str | os.PathLike, media_root: str | os.PathLike | None = None, default_frames: str = DEFAULT_SAMPLING) -> Manifest:
    """Reads and checks a manifest: a local path, or an `s3://` / `gs://` URI. Videos sample
    frames as their `frames` cell says, else as `default_frames` says (`uniform:N`, `fps:R` or
    `scene`). Relative media paths resolve against `media_root`, by default the manifest's folder
    (a remote manifest's folder is a remote root: its relative paths name keys under it)."""
    path = os.fspath(path)
    table = _read_table(path)
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise ManifestError(f"{path}: missing required column(s) {missing}; columns are {table.column_names}")
    unknown = [c for c in table.column_names if c not in COLUMNS]
    if unknown:
        log.warning("%s: ignoring unknown column(s) %s", path, unknown)
    root = os.fspath(media_root) if media_root is not None else posixpath.dirname(path) if is_remote(path) else str(Path(path).parent)
    root = root if is_remote(root) else Path(root).resolve()
    manifest = _plan(table, root, default_frames)
    manifest.root = str(root)
    return manifest


def _read_table(path: str) -> pa.Table:
    from pyarrow import csv, json, parquet

    suffix = posixpath.splitext(urlparse(path).path if is_remote(path) else path)[1].lower()
    if suffix not in (".csv", ".jsonl", ".ndjson", ".json", ".parquet"):
        raise ManifestError(f"{path}: manifest must be .csv, .jsonl or .parquet, not {suffix or 'no extension'!r}")
    try:
        data = _remote_bytes(path) if is_remote(path) else None

        def source():  # a local path, or a fresh reader over the remote bytes
            return pa.BufferReader(data) if data is not None else path

        if suffix == ".csv":
            # Every column as text: ids like 00123 must not turn into numbers.
            return csv.read_csv(source(), convert_options=csv.ConvertOptions(column_types=_all_strings(source())))
        if suffix == ".parquet":
            return parquet.read_table(source())
        return json.read_json(source())
    except (OSError, pa.ArrowInvalid) as e:
        raise ManifestError(f"cannot read manifest {path}: {e}") from e


def _remote_bytes(uri: str) -> pa.Buffer:
    filesystem, key = filesystem_for(uri)
    with filesystem.open_input_stream(key) as f:
        return f.read_buffer()


def _all_strings(source) -> dict[str, pa.DataType]:
    from pyarrow import csv

    with csv.open_csv(source) as reader:
        return {name: pa.string() for name in reader.schema.names}


def _text(value) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _plan(table: pa.Table, root: Path | str, default_frames: str) -> Manifest:
    out = {name: [] for name in ("item_id", "kind", "title", "category", "seller_id", "media_uri", "frames", "status", "error")}
    rejected, seen = [], set()
    columns = {name: table.column(name).to_pylist() if name in table.column_names else None for name in COLUMNS}
    for n in range(table.num_rows):
        value = {name: (_text(col[n]) if col is not None else None) for name, col in columns.items()}
        item_id = value["item_id"]
        if item_id is None:
            rejected.append({"row": n + 1, "item_id": None, "error": "row has no item_id"})
            continue
        if item_id in seen:
            rejected.append({"row": n + 1, "item_id": item_id, "error": "duplicate item_id: the first row with it was kept"})
            continue
        seen.add(item_id)
        media_uri, frames, error = _check_row(value, root, default_frames)
        for name in ("item_id", "kind", "title", "category", "seller_id"):
            out[name].append(value[name])
        out["media_uri"].append(media_uri)
        out["frames"].append(frames)
        out["status"].append(ERROR if error else OK)
        out["error"].append(error)
    return Manifest(pa.table({k: pa.array(v, pa.string()) for k, v in out.items()}), rejected)


def _check_row(value: dict, root: Path | str, default_frames: str) -> tuple[str | None, str | None, str | None]:
    """A keyed row's (media_uri, frames, error): what to read, how to sample it, or why not."""
    kind = value["kind"]
    if kind not in KINDS:
        return None, None, f"kind must be one of {', '.join(KINDS)}, not {kind!r}"
    if len(value["title"] or "") > MAX_TITLE_CHARS:
        return None, None, f"title is {len(value['title']):,} characters, over the {MAX_TITLE_CHARS:,} a title may have"
    frames = None
    if kind != PRODUCT:
        try:
            frames = str(FrameSampling.parse(value["frames"] or default_frames))
        except ValueError as e:
            return None, value["frames"], f"frames: {e}"
    media_column = "image" if kind == PRODUCT else "video"  # the manifest's columns
    ref = value[media_column]
    if ref is None:
        return None, frames, f"a {kind} needs a media path in its {media_column!r} column"
    try:
        return resolve_media(ref, root), frames, None
    except ManifestError as e:
        return ref, frames, str(e)


def resolve_media(ref: str, root: Path | str) -> str:
    """A manifest's media reference as a readable URI; relative paths must stay inside `root`, a
    local folder or an `s3://` / `gs://` prefix."""
    parsed = urlparse(ref)
    scheme = parsed.scheme.lower()
    if scheme in REMOTE_SCHEMES:
        if not ref.lower().startswith(f"{scheme}://") or not parsed.netloc:
            raise ManifestError(f"{ref!r} is not a {scheme}://bucket/key URI")
        return ref
    if isinstance(root, str):
        return _remote_key(ref, root)
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ManifestError(f"{ref!r} names another host ({parsed.netloc}): file:// URIs must be local")
        local = Path(unquote(parsed.path))
    elif scheme and len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise ManifestError(f"scheme {scheme + '://'!r} is not allowed: use a local path, file://, s3:// or gs://")
    else:
        local = Path(ref)
    resolved = (root / local).resolve()  # an absolute `local` replaces `root`
    if not resolved.is_relative_to(root):
        raise ManifestError(f"path {ref!r} resolves to {resolved}, outside the media root {root}")
    return str(resolved)


def _remote_key(ref: str, root: str) -> str:
    """A relative path under a remote media root, as a URI; anything that leaves the root is refused."""
    base = urlparse(root)
    prefix = base.path.rstrip("/")
    key = posixpath.normpath(posixpath.join(prefix + "/", ref))
    uri = f"{base.scheme}://{base.netloc}{key}"
    # Checked as the reader will parse it: `?` and `#` would cut the key short (`..?/x` reads `..`).
    read_back = urlparse(uri)
    if (
        urlparse(ref).scheme
        or ref.startswith("/")
        or read_back.query
        or read_back.fragment
        or read_back.path != key
        or not key.startswith(prefix + "/")
    ):
        raise ManifestError(f"path {ref!r} is not a relative path inside the remote media root {root}")
    return uri
