"""Search over a real ingested table: results equal a numpy brute force, filters are safe."""

import shutil

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import MICRO, PIXEL_POLICY, SAMPLE_PHOTOS, photo_bytes, ray_job, sample_photo, write_manifest
from typer.testing import CliRunner

from shoplens.encoders.weights import WeightsError, query_weights
from shoplens.pipelines.cli import app
from shoplens.pipelines.ingest.job import IngestConfig, ingest
from shoplens.pipelines.search.searcher import Searcher, SearchError, SearchFilters
from shoplens.pipelines.store.schemas import ITEMS

CATEGORIES = ["posters", "kitchen", "posters", "o'reilly books", "kitchen", "posters"]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """Twelve products (six photos and a JPEG re-encoding of each) and one broken image."""
    root = tmp_path_factory.mktemp("search")
    rows = []
    for n, name in enumerate(SAMPLE_PHOTOS):
        shutil.copyfile(sample_photo(name), root / name)
        (root / f"copy-{n}.jpg").write_bytes(photo_bytes(name))  # re-encoded as JPEG
        for item_id, image in ((f"p{n}", name), (f"c{n}", f"copy-{n}.jpg")):
            rows.append(
                {
                    "item_id": item_id,
                    "kind": "product",
                    "title": f"{CATEGORIES[n]} item {name}",
                    "image": image,
                    "category": CATEGORIES[n],
                    "seller_id": f"s{n % 2}",
                }
            )
    (root / "broken.jpg").write_bytes(b"not an image")
    rows.append({"item_id": "broken", "kind": "product", "image": "broken.jpg", "category": "posters"})
    path = str(root / "db")
    ingest(
        IngestConfig(
            manifest=write_manifest(root / "m.csv", rows),
            db=path,
            model=MICRO.model,
            pretrained=MICRO.pretrained,
            device="cpu",
            policy=PIXEL_POLICY,
        )
    )
    return path


@pytest.fixture(scope="module", params=[False, True], ids=["lance", "in-memory"])
def searcher(request, db):
    """A one-shot query's searcher (Lance) and a warm process's (vectors in memory): the same answers."""
    return Searcher(db, device="cpu", prewarm=request.param)


def brute_force(db, query: np.ndarray, k: int, keep=lambda row: True, field="vector") -> dict[str, float]:
    """The top-k item ids and cosine scores, by numpy over every row the filter keeps."""
    rows = [r for r in lancedb.connect(db).open_table(ITEMS).to_arrow().to_pylist() if r["status"] == "ok" and keep(r)]
    scores = np.array([r[field] for r in rows]) @ query
    return {rows[i]["item_id"]: float(scores[i]) for i in np.argsort(-scores)[:k]}


def assert_same_results(hits: list[dict], expected: dict[str, float]) -> None:
    """Same scores rank by rank; the same ids, up to the order of exact ties."""
    np.testing.assert_allclose([h["score"] for h in hits], sorted(expected.values(), reverse=True), atol=1e-5)
    for hit in hits:
        assert hit["item_id"] in expected or np.isclose(hit["score"], min(expected.values()), atol=1e-5)


@ray_job
def test_text_search_equals_numpy_brute_force(db, searcher, micro_encoder):
    query = micro_encoder.encode_texts(["a ceramic cup"])[0]
    hits = searcher.by_text("a ceramic cup", k=5)
    assert_same_results(hits, brute_force(db, query, 5))
    assert all(-1 <= h["score"] <= 1 for h in hits)
    title_hits = searcher.by_text("a ceramic cup", k=5, field="title")
    assert_same_results(title_hits, brute_force(db, query, 5, field="text_vector"))


@ray_job
def test_filters_equal_brute_force_with_the_same_filters(db, searcher, micro_encoder):
    query = micro_encoder.encode_texts(["poster"])[0]
    hits = searcher.by_text("poster", k=4, filters=SearchFilters(category="posters", seller_id="s0"))
    assert_same_results(hits, brute_force(db, query, 4, lambda r: r["category"] == "posters" and r["seller_id"] == "s0"))
    assert {h["category"] for h in hits} == {"posters"}


@ray_job
def test_item_search_finds_the_re_encoded_copy_first(searcher):
    for n in range(len(SAMPLE_PHOTOS)):
        hits = searcher.by_item(f"p{n}", k=3)
        assert hits[0]["item_id"] == f"c{n}" and f"p{n}" not in [h["item_id"] for h in hits]


@ray_job
def test_image_search(searcher):
    hits = searcher.by_image(sample_photo("chelsea.png"), k=2)
    assert {h["item_id"] for h in hits} == {"p2", "c2"}


@ray_job
@pytest.mark.parametrize("evil", ["posters' OR '1'='1", 'posters" OR 1=1 --', "x'; DROP TABLE items; --", "o'reilly books"])
def test_injection_strings_match_nothing_extra(db, searcher, evil):
    hits = searcher.by_text("anything", k=20, filters=SearchFilters(category=evil))
    assert {h["category"] for h in hits} <= {evil}
    assert len(hits) == (2 if evil == "o'reilly books" else 0)  # a real quote in a real category still works
    assert lancedb.connect(db).open_table(ITEMS).count_rows() == 13


@ray_job
def test_a_max_risk_filter_passes_only_scored_items_at_or_below_it(db, searcher):
    table = lancedb.connect(db).open_table(ITEMS).to_arrow().to_pylist()
    risks = {r["item_id"]: r["risk"] for r in table}
    assert risks["broken"] is None  # failed to ingest: unscored
    limit = float(np.median([r for r in risks.values() if r is not None]))
    hits = searcher.by_text("cup", k=20, filters=SearchFilters(max_risk=limit))
    assert {h["item_id"] for h in hits} == {i for i, r in risks.items() if r is not None and r <= limit}
    assert all(h["risk"] <= limit for h in hits)


@ray_job
def test_unknown_and_failed_items_are_clear_errors(searcher):
    with pytest.raises(SearchError, match="no such item"):
        searcher.by_item("nope' OR '1'='1")
    with pytest.raises(SearchError, match="failed to ingest"):
        searcher.by_item("broken")
    with pytest.raises(SearchError, match="-k must be at least 1"):
        searcher.by_text("cup", k=0)


@ray_job
def test_model_mismatch_is_refused(db, tmp_path, micro_encoder):
    from safetensors.torch import save_file

    # The same architecture with other weights: it loads, and its vectors mean something else.
    other = {k: (v + 0.01).contiguous() for k, v in micro_encoder.model.state_dict().items()}
    save_file(other, str(tmp_path / "other.safetensors"))
    searcher = Searcher(db, pretrained=str(tmp_path / "other.safetensors"), device="cpu")
    with pytest.raises(SearchError, match="cannot be compared"):
        searcher.by_text("cup")


@ray_job
def test_provenance_gives_back_the_weights():
    assert query_weights("open_clip/ViT-B-32/laion2b_s34b_b79k", None) == ("ViT-B-32", "laion2b_s34b_b79k")
    assert query_weights("open_clip/shoplens-micro/random-seed0", None) == ("shoplens-micro", "random")
    with pytest.raises(WeightsError, match="pass them with --pretrained"):
        query_weights("open_clip/ViT-B-32/sha256:0123456789abcdef", None)


@ray_job
def test_empty_table_and_missing_table(tmp_path, media_dir):
    with pytest.raises(SearchError, match="no 'items' table"):
        Searcher(str(tmp_path / "nothing"))
    manifest = write_manifest(media_dir / "m.csv", [{"item_id": "x", "kind": "product", "image": "missing.jpg"}])
    db = str(tmp_path / "db")
    ingest(IngestConfig(manifest=manifest, db=db, model=MICRO.model, pretrained=MICRO.pretrained, device="cpu", policy=PIXEL_POLICY))
    for prewarm in (False, True):
        with pytest.raises(SearchError, match="holds no embedded item"):
            Searcher(db, prewarm=prewarm).by_text("cup")


@ray_job
def test_search_cli_json(db):
    import json

    result = CliRunner().invoke(
        app, ["search", "--db", db, "--item", "p1", "-k", "3", "--category", "kitchen", "--json", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["count"] == 3 and {r["category"] for r in summary["results"]} == {"kitchen"}
    assert summary["results"][0]["item_id"] == "c1"
    bad = CliRunner().invoke(app, ["search", "--db", db, "--text", "a", "--item", "p1"])
    assert bad.exit_code == 2 and "exactly one of" in bad.output
    unknown = CliRunner().invoke(app, ["search", "--db", db, "--item", "nope", "--device", "cpu"])
    assert unknown.exit_code == 2 and "no such item" in unknown.output


@ray_job
def test_shop_the_video_finds_the_product_shown_and_when(tmp_path):
    import cv2
    from PIL import Image

    def square(name, side=128):  # the photo's centre square, as the decoder crops it
        image = Image.open(sample_photo(name)).convert("RGB")
        edge = min(image.size)
        left, top = (image.width - edge) // 2, (image.height - edge) // 2
        return cv2.cvtColor(np.asarray(image.crop((left, top, left + edge, top + edge)).resize((side, side))), cv2.COLOR_RGB2BGR)

    noise = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(tmp_path / "haul.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (128, 128))
    for n in range(125):  # 5 s; the cup is on screen from 2.0 s to 3.0 s
        writer.write(square("coffee.png") if 50 <= n < 75 else noise.integers(0, 256, (128, 128, 3), dtype=np.uint8))
    writer.release()
    rows = [{"item_id": "haul", "kind": "video", "video": "haul.avi", "frames": "fps:5"}]
    for name in SAMPLE_PHOTOS:
        shutil.copyfile(sample_photo(name), tmp_path / name)
        rows.append({"item_id": name.split(".")[0], "kind": "product", "image": name})
    db = str(tmp_path / "db")
    ingest(
        IngestConfig(
            manifest=write_manifest(tmp_path / "m.csv", rows),
            db=db,
            model=MICRO.model,
            pretrained=MICRO.pretrained,
            device="cpu",
            policy=PIXEL_POLICY,
        )
    )

    hits = Searcher(db, device="cpu").by_video("haul", k=3)
    assert hits[0]["item_id"] == "coffee" and 2.0 <= hits[0]["timestamp_s"] < 3.0
    assert hits[0]["score"] > 0.99 and all(h["kind"] == "product" for h in hits)
    with pytest.raises(SearchError, match="no sampled frames"):
        Searcher(db, device="cpu").by_video("coffee")


# --- the safety filters, on a table written without Ray ---------------------------------------

F32 = np.float32
RISKY_DIM = 16
# item_id -> (risk, decision, status): risks exactly at the limits tests use (0.3, 0.6 and 0.9 are
# not exact in float32: a stored risk of 0.3 holds float32(0.3)), the next float32 above them, zero
# and just above zero, and items without a risk.
RISKY = {
    "zero": (0.0, "allow", "ok"),
    "hundredth": (0.01, "allow", "ok"),
    "at-0.3": (F32(0.3), "allow", "ok"),
    "over-0.3": (np.nextafter(F32(0.3), F32(1)), "allow", "ok"),
    "at-0.6": (F32(0.6), "review", "ok"),
    "over-0.6": (np.nextafter(F32(0.6), F32(1)), "review", "ok"),
    "at-0.9": (F32(0.9), "block", "ok"),
    "over-0.9": (np.nextafter(F32(0.9), F32(1)), "block", "ok"),
    "one": (1.0, "block", "ok"),
    "unscored": (None, "unscored", "ok"),  # ingested, but a signal failed: scored by nothing
    "failed": (None, "unscored", "error"),  # failed to ingest: no vector
    "undecided": (0.2, None, "ok"),  # no decision at all (a table from before the safety columns): never shown
}


@pytest.fixture(scope="module")
def risky_db(tmp_path_factory) -> str:
    from benchmarks.synthetic import embedding_like, synthetic_items

    ids = list(RISKY)
    rows = synthetic_items(embedding_like(len(ids), RISKY_DIM), model="open_clip/shoplens-micro/random-seed0")
    failed = pa.array([RISKY[i][2] != "ok" for i in ids])
    replace = {
        "item_id": pa.array(ids),
        "risk": pa.array([None if RISKY[i][0] is None else float(RISKY[i][0]) for i in ids], pa.float32()),
        "decision": pa.array([RISKY[i][1] for i in ids], pa.string()),
        "status": pa.array([RISKY[i][2] for i in ids]),
        "vector": pc.if_else(failed, pa.nulls(len(ids), rows["vector"].type), rows["vector"]),
        "text_vector": pc.if_else(failed, pa.nulls(len(ids), rows["text_vector"].type), rows["text_vector"]),
    }
    for name, values in replace.items():
        rows = rows.set_column(rows.schema.get_field_index(name), rows.schema.field(name), values)
    db = str(tmp_path_factory.mktemp("risky") / "db")
    lancedb.connect(db).create_table(ITEMS, rows, on_bad_vectors="null")  # as the store writes a failed row
    return db


@pytest.fixture(scope="module", params=[False, True], ids=["lance", "in-memory"])
def risky_searcher(request, risky_db):
    return Searcher(risky_db, device="cpu", prewarm=request.param)


def shown(risky_searcher, **filters) -> set[str]:
    """Every item a query returns under `filters` (k is the table's size)."""
    hits = risky_searcher.nearest(np.ones(RISKY_DIM, np.float32), len(RISKY), SearchFilters(**filters))
    return {h["item_id"] for h in hits}


def expected(max_risk=None, include_blocked=False, include_unscored=False) -> set[str]:
    """What the README promises, in plain Python: ingested items with a decision, blocked and
    unscored ones only when asked for, and with `max_risk` only items whose risk is at or below
    it, compared in float32 as stored; a null risk never passes."""
    decided = {"allow", "review", *["block"] * include_blocked, *["unscored"] * include_unscored}
    return {
        i
        for i, (risk, decision, status) in RISKY.items()
        if status == "ok" and decision in decided and (max_risk is None or (risk is not None and F32(risk) <= F32(max_risk)))
    }


@pytest.mark.parametrize("limit", [0.3, 0.6, 0.9])
def test_max_risk_keeps_a_risk_exactly_at_the_limit_and_not_one_above(risky_searcher, limit):
    found = shown(risky_searcher, max_risk=limit, include_blocked=True, include_unscored=True)
    assert f"at-{limit}" in found and f"over-{limit}" not in found
    assert found == expected(limit, include_blocked=True, include_unscored=True)
    assert "unscored" not in found


def test_max_risk_0_keeps_only_risk_0(risky_searcher):
    assert shown(risky_searcher, max_risk=0) == {"zero"}
    assert shown(risky_searcher, max_risk=0.0, include_blocked=True, include_unscored=True) == {"zero"}
    assert shown(risky_searcher, max_risk=1, include_blocked=True) == expected(1, include_blocked=True)
    assert "one" in shown(risky_searcher, max_risk=1, include_blocked=True)


def test_a_null_risk_never_passes_max_risk(risky_searcher):
    everything = shown(risky_searcher, include_blocked=True, include_unscored=True)
    assert "unscored" in everything and "failed" not in everything  # a failed row has no vector to find
    assert "unscored" not in shown(risky_searcher, max_risk=1.0, include_blocked=True, include_unscored=True)
    assert shown(risky_searcher, max_risk=1.0, include_blocked=True, include_unscored=True) == everything - {"unscored"}


def test_unscored_and_blocked_items_are_hidden_unless_asked_for(risky_searcher):
    for include_blocked in (False, True):
        for include_unscored in (False, True):
            found = shown(risky_searcher, include_blocked=include_blocked, include_unscored=include_unscored)
            assert found == expected(None, include_blocked, include_unscored)
            assert ("unscored" in found) == include_unscored and ("at-0.9" in found) == include_blocked
    assert shown(risky_searcher) == {"zero", "hundredth", "at-0.3", "over-0.3", "at-0.6", "over-0.6"}


@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan"), float("inf"), "0.3", True])
def test_a_max_risk_outside_0_to_1_is_refused(bad):
    with pytest.raises(SearchError, match="--max-risk must be a number in"):
        SearchFilters(max_risk=bad)


@pytest.mark.parametrize("limit", [np.float32(0.3), np.float64(0.3), np.int64(0), 0])
def test_a_max_risk_of_any_real_number_type_is_taken(risky_searcher, limit):
    assert shown(risky_searcher, max_risk=limit) == expected(float(limit))


def test_search_cli_max_risk(risky_db):
    import json

    def cli(*flags):
        result = CliRunner().invoke(app, ["search", "--db", risky_db, "--item", "at-0.9", "-k", "20", "--json", *flags])
        assert result.exit_code == 0, result.output
        return {r["item_id"] for r in json.loads(result.stdout.strip().splitlines()[-1])["results"]}

    assert cli("--max-risk", "0") == {"zero"}
    assert cli("--max-risk", "0.3") == {"zero", "hundredth", "at-0.3"}
    assert cli("--max-risk", "0.9", "--include-blocked", "--include-unscored") == expected(0.9, True, True) - {"at-0.9"}  # not itself
    assert "unscored" in cli("--include-unscored") and "unscored" not in cli()
    bad = CliRunner().invoke(app, ["search", "--db", risky_db, "--item", "zero", "--max-risk", "1.5"])
    assert bad.exit_code == 2 and "--max-risk must be in [0, 1]" in bad.output


def test_a_table_that_mixes_models_is_refused(tmp_path):
    from benchmarks.synthetic import embedding_like, synthetic_items

    db = str(tmp_path / "db")
    vectors = embedding_like(6, RISKY_DIM)
    table = lancedb.connect(db).create_table(ITEMS, synthetic_items(vectors[:3], model="open_clip/shoplens-micro/random-seed0"))
    table.add(synthetic_items(vectors[3:], model="open_clip/ViT-B-32/laion2b_s34b_b79k", first=3))
    for prewarm in (False, True):
        with pytest.raises(SearchError, match="the table mixes models"):
            Searcher(db, prewarm=prewarm)
    result = CliRunner().invoke(app, ["search", "--db", db, "--item", "i0000000"])
    assert result.exit_code == 2 and "mixes models" in result.output


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"max_risk": 0},
        {"max_risk": 0.3},
        {"max_risk": F32(0.6), "include_blocked": True},
        {"max_risk": 0.9, "include_blocked": True, "include_unscored": True},
        {"include_unscored": True},
    ],
    ids=["none", "max-0", "max-0.3", "max-0.6-blocked", "max-0.9-all", "unscored"],
)
def test_the_lancedb_expression_passes_the_rows_the_arrow_one_does(risky_db, filters):
    """Keyword search filters with LanceDB's expression (`expression()`), vector search with
    Arrow's: on the same table both pass exactly what the README promises."""
    table = lancedb.connect(risky_db).open_table(ITEMS)
    rows = table.search().where(SearchFilters(**filters).expression()).select(["item_id"]).limit(None).to_list()
    assert {r["item_id"] for r in rows} == expected(**filters)
