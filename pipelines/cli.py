"""`shoplens`: the command line. Progress goes to stderr; the last stdout line is a JSON summary.

Exit codes: 0 done; 3 done, but some items failed (recorded per row); 1 the job failed;
2 usage or configuration error.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import typer

from shoplens.encoders.weights import DEFAULT_MODEL, DEFAULT_PRETRAINED

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SOME_ITEMS_FAILED = 0, 1, 2, 3

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


def run_job(job) -> None:
    """Runs `job() -> summary dict`, prints the summary and exits with the design's exit code:
    a UsageError, whichever room raised it, is exit code 2."""
    from shoplens.encoders.errors import UsageError

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="shoplens: %(message)s")
    try:
        summary = job()
    except UsageError as e:
        _usage(str(e))
    except Exception as e:  # the job itself failed: say so in one line, keep the trace on stderr
        logging.getLogger("shoplens").exception("job failed")
        typer.echo(json.dumps({"error": f"{type(e).__name__}: {e}", "exit_code": EXIT_FAILED}))
        raise typer.Exit(EXIT_FAILED) from None
    code = EXIT_SOME_ITEMS_FAILED if summary.get("failed") else EXIT_OK
    typer.echo(json.dumps(summary | {"exit_code": code}))
    raise typer.Exit(code)


def progress_bar(total: int, label: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="item", file=sys.stderr, dynamic_ncols=True)


@app.command()
def ingest(
    manifest: str = typer.Argument(..., help="CSV, JSON Lines or Parquet manifest, one row per item: a path, s3:// or gs:// URI."),
    db: str = typer.Option(..., "--db", help="LanceDB database: a folder, s3:// or gs:// URI."),
    model: str = typer.Option(DEFAULT_MODEL, help="Any OpenCLIP architecture name."),
    pretrained: str = typer.Option(DEFAULT_PRETRAINED, help="Weights: an OpenCLIP tag, a checkpoint file, local-dir:FOLDER, or random."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    device_decode: str = typer.Option("auto", help="Decode JPEGs on the embedding device (nvJPEG): auto (on GPUs), on, off."),
    frames: str = typer.Option("uniform:8", help="Video frame sampling: uniform:N, fps:R or scene (a manifest `frames` cell overrides)."),
    media_root: str = typer.Option(
        None, help="Folder or s3:// / gs:// prefix relative media paths resolve against (default: the manifest's folder)."
    ),
    policy: Path = typer.Option(
        None,
        help="Safety policy file (YAML); it becomes the database's policy "
        "(default: the database's own: the last one given to a job or calibrated, else the shipped one).",
    ),
    ray_address: str = typer.Option(None, help="Ray cluster to join (default: a running one, else a local one)."),
) -> None:
    """Embed and safety-score a catalog into LanceDB with a Ray Data job."""
    from shoplens.pipelines.ingest.job import IngestConfig
    from shoplens.pipelines.ingest.job import ingest as run_ingest

    config = _config(
        IngestConfig,
        manifest=manifest,
        db=db,
        model=model,
        pretrained=pretrained,
        device=device,
        device_decode=device_decode,
        frames=frames,
        media_root=media_root,
        policy=policy,
        ray_address=ray_address,
    )

    def job() -> dict:
        with progress_bar(None, "ingest") as bar:

            def total(rows: int) -> None:
                bar.total = rows
                bar.refresh()

            return run_ingest(config, on_rows=bar.update, on_total=total).to_dict()

    run_job(job)


@app.command()
def search(
    db: str = typer.Option(..., "--db", help="LanceDB database that `shoplens ingest` wrote."),
    text: str = typer.Option(None, "--text", help="Find items like this text."),
    image: Path = typer.Option(None, "--image", help="Find items like this image file."),
    item: str = typer.Option(None, "--item", help="Find items like this stored item."),
    video: str = typer.Option(None, "--video", help="Find the items seen in this stored video (shop the video)."),
    k: int = typer.Option(10, "-k", help="How many results."),
    kind: str = typer.Option(None, help="Only this kind: product, video or live."),
    category: str = typer.Option(None, help="Only this category."),
    seller: str = typer.Option(None, help="Only this seller_id."),
    max_risk: float = typer.Option(None, help="Only items scored at or below this risk (unscored items never pass)."),
    include_blocked: bool = typer.Option(False, help="Also return items the policy blocked."),
    include_unscored: bool = typer.Option(False, help="Also return items no safety signal could score (for moderators)."),
    field: str = typer.Option("image", help="Compare a --text query with item images (image) or titles (title)."),
    hybrid: bool = typer.Option(False, help="With --text: fuse vector and title full-text results (reciprocal rank fusion)."),
    nprobes: int = typer.Option(10, help="ANN index partitions to scan (after `shoplens index`): more is slower, higher recall."),
    refine_factor: int = typer.Option(
        None,
        help="Re-rank refine-factor x k ANN candidates by their full vectors "
        "(default: 5 on an IVF_PQ index, 1 on the others); 0: never, scores approximate.",
    ),
    pretrained: str = typer.Option(None, help="Weights to embed the query (default: the table's own)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help="Put the results in the JSON line on stdout."),
) -> None:
    """Search the items table by text, image or item, with filters."""
    from dataclasses import replace

    from shoplens.encoders.rows import PRODUCT
    from shoplens.pipelines.search.searcher import FIELDS, Searcher, SearchFilters
    from shoplens.pipelines.store.indexes import QueryTuning

    if sum(q is not None for q in (text, image, item, video)) != 1:
        _usage("give exactly one of --text, --image, --item, --video")
    if field not in FIELDS or (field == "title" and text is None):
        _usage("--field is image or title, and title goes with --text")
    if hybrid and text is None:
        _usage("--hybrid goes with --text")
    if nprobes < 1 or (refine_factor is not None and refine_factor < 0):
        _usage("--nprobes must be at least 1 and --refine-factor at least 0")
    if max_risk is not None and not 0 <= max_risk <= 1:
        _usage(f"--max-risk must be in [0, 1], not {max_risk}")
    filters = SearchFilters(
        kind=kind,
        category=category,
        seller_id=seller,
        max_risk=max_risk,
        include_blocked=include_blocked,
        include_unscored=include_unscored,
    )

    def job() -> dict:
        searcher = Searcher(db, pretrained=pretrained, device=device, tuning=QueryTuning(nprobes, refine_factor))
        if hybrid:
            hits = searcher.hybrid(text, k, filters, field)
        elif text is not None:
            hits = searcher.by_text(text, k, filters, field)
        elif image is not None:
            hits = searcher.by_image(image, k, filters)
        elif item is not None:
            hits = searcher.by_item(item, k, filters)
        else:
            hits = searcher.by_video(video, k, replace(filters, kind=filters.kind or PRODUCT))
        for rank, hit in enumerate(hits, 1):
            at = f"  at {hit['timestamp_s']:.1f} s" if "timestamp_s" in hit else ""
            typer.echo(f"{rank:>3}  {hit['score']:.4f}  {hit['item_id']:<24} {hit['kind']:<8} {hit['title'] or ''}{at}")
        return {"command": "search", "model": searcher.model, "count": len(hits)} | ({"results": hits} if as_json else {})

    run_job(job)


safety_app = typer.Typer(no_args_is_help=True, help="The safety policy and the bank of known violating media.")
bank_app = typer.Typer(no_args_is_help=True, help="The PDQ hash bank: a match blocks an item.")
features_app = typer.Typer(no_args_is_help=True, help="Ranking features for the recommender.")
review_app = typer.Typer(no_args_is_help=True, help="The moderation review queue, and reviewers' decisions.")
app.add_typer(safety_app, name="safety")
safety_app.add_typer(bank_app, name="bank")
app.add_typer(features_app, name="features")
codes_app = typer.Typer(no_args_is_help=True, help="Semantic IDs: discrete codes of the item embeddings.")
app.add_typer(codes_app, name="codes")
app.add_typer(review_app, name="review")


@review_app.command("export")
def review_export(
    db: str = typer.Option(..., "--db", help="LanceDB database that `shoplens ingest` wrote."),
    out: Path = typer.Option(..., "--out", help="Folder for tasks.json, labeling_config.xml, review.parquet/.csv, evidence/."),
    limit: int = typer.Option(None, help="At most this many items, highest risk first."),
    categories: list[str] = typer.Option(None, "--categories", help="Only items at or over a review threshold of these categories."),
    include_blocked: bool = typer.Option(False, help="Also export blocked items, for audit."),
    evidence_prefix: str = typer.Option(
        "", help="Prefix for evidence paths in tasks.json (e.g. Label Studio's /data/local-files/?d=DIR/)."
    ),
) -> None:
    """Export the review queue with evidence, in Label Studio's task format and flat files."""
    from shoplens.pipelines.moderation.review_queue import export_queue

    run_job(lambda: export_queue(db, out, limit, categories, include_blocked, evidence_prefix))


@review_app.command("import")
def review_import(
    file: Path = typer.Argument(..., help="A Label Studio JSON export, or a CSV item_id,category,label."),
    db: str = typer.Option(..., "--db", help="LanceDB database the decisions are about."),
) -> None:
    """Import reviewers' decisions into the `labels` table (all or nothing)."""
    from shoplens.pipelines.moderation.review_queue import import_labels

    run_job(lambda: import_labels(db, file))


@safety_app.command("calibrate")
def safety_calibrate(
    db: str = typer.Option(..., "--db", help="LanceDB database with imported labels."),
    target_precision: float = typer.Option(0.9, help="Precision the block threshold must reach on the labels."),
    review_precision: float = typer.Option(0.5, help="Precision the review threshold must reach."),
) -> None:
    """Fit the policy to reviewers' labels: heads, calibration, thresholds; store a new version."""
    from shoplens.pipelines.moderation.calibrate import calibrate

    run_job(lambda: calibrate(db, target_precision, review_precision))


@safety_app.command("rescore")
def safety_rescore(
    db: str = typer.Option(..., "--db", help="LanceDB database to decide again."),
    pretrained: str = typer.Option(None, help="Weights of the table's model, for a table built from a local checkpoint."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    policy: Path = typer.Option(
        None,
        help="Safety policy file to apply; it becomes the database's policy "
        "(default: the database's own: the last one given to a job or calibrated, else the shipped one).",
    ),
) -> None:
    """Apply the database's current policy to stored scores and embeddings, without re-embedding."""
    from shoplens.pipelines.moderation.rescore import rescore

    run_job(lambda: rescore(db, pretrained, device, policy))


@bank_app.command("add")
def bank_add(
    files: list[Path] = typer.Argument(..., help="Images of known violating media."),
    category: str = typer.Option(..., help="The policy category they violate."),
    db: str = typer.Option(..., "--db", help="LanceDB database the bank lives in (beside `items`)."),
    policy: Path = typer.Option(
        None, help="Safety policy file for the category and match rules (default: the database's own, else the shipped one)."
    ),
) -> None:
    """Add images to the hash bank; later ingests block items that match them."""
    from shoplens.pipelines.moderation.bank_add import add_to_bank
    from shoplens.pipelines.store.database import ItemStore
    from shoplens.safety.heads import load_policy_and_heads

    def job() -> dict:
        given = load_policy_and_heads(policy)[0] if policy is not None else None  # refused before the database is opened
        return add_to_bank(db, files, category, given or ItemStore(db).policy()[0])

    run_job(job)


@features_app.command("export")
def features_export(
    db: str = typer.Option(..., "--db", help="LanceDB database that `shoplens ingest` wrote."),
    out: Path = typer.Option(..., "--out", help="Parquet file to write."),
) -> None:
    """Write one row of ranking features per item (Parquet, keyed by item_id, with event_timestamp)."""
    from shoplens.pipelines.store.features_export import export_features

    run_job(lambda: export_features(db, out))


@codes_app.command("fit")
def codes_fit(
    db: str = typer.Option(..., "--db", help="LanceDB database that `shoplens ingest` wrote."),
    levels: int = typer.Option(3, help="Code levels, coarse to fine (residual quantisation)."),
    codebook_size: int = typer.Option(256, help="Codes a level."),
) -> None:
    """Fit a new version of the semantic-ID codebooks on the stored item vectors (earlier versions are kept)."""
    from shoplens.pipelines.store.codes import fit_codes

    run_job(lambda: fit_codes(db, levels, codebook_size))


@codes_app.command("assign")
def codes_assign(db: str = typer.Option(..., "--db", help="LanceDB database that `shoplens ingest` wrote.")) -> None:
    """Code every stored item with the newest codebooks (semantic_id, codes_version)."""
    from shoplens.pipelines.store.codes import assign_codes

    run_job(lambda: assign_codes(db))


@app.command()
def index(
    db: str = typer.Option(..., "--db", help="LanceDB database that `shoplens ingest` wrote."),
    ann: str = typer.Option("IVF_SQ", help="ANN index type: IVF_SQ, IVF_PQ or IVF_HNSW_SQ."),
) -> None:
    """Build ANN, filter-column and title full-text indexes on the items table (re-run after big ingests)."""
    from shoplens.pipelines.store.indexes import build_indexes

    run_job(lambda: build_indexes(db, ann.upper(), log=lambda line: typer.echo(line, err=True)))


@app.command()
def dedup(
    db: str = typer.Option(..., "--db", help="LanceDB database that `shoplens ingest` wrote."),
    threshold: float = typer.Option(0.97, help="Cosine similarity of visual vectors at or above which items are duplicates."),
) -> None:
    """Group near-identical items; store dup_group and dup_count in the items table."""
    from shoplens.pipelines.search.dedup import dedup as run_dedup

    run_job(lambda: run_dedup(db, threshold))


@app.command()
def demo(
    out: Path = typer.Option(Path("shoplens-demo"), help="Folder for the sample catalog and its database."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """Build a small catalog from package-shipped images, ingest it and show what came out."""
    from shoplens.pipelines.demo import run_demo

    run_job(lambda: run_demo(out, device))


def _usage(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    typer.echo(json.dumps({"error": message, "exit_code": EXIT_USAGE}))
    raise typer.Exit(EXIT_USAGE)


def _config(model_cls, **values):
    from pydantic import ValidationError

    try:
        return model_cls(**values)
    except ValidationError as e:
        _usage("; ".join(f"--{'.'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}" for err in e.errors()))


def main() -> None:
    app()
