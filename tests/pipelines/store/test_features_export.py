"""`shoplens features export` on tables of every schema the store can migrate."""

import lancedb
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.synthetic import embedding_like, synthetic_items
from shoplens.pipelines.store.features_export import export_features
from shoplens.pipelines.store.schemas import ITEMS


def test_a_table_from_before_the_aggregate_columns_exports_them_null(tmp_db, tmp_path):
    rows = synthetic_items(embedding_like(20, 16), moderated=True)
    older = rows.drop_columns(["risk_topk_mean", "frames_over_review", "hash_match", "dup_count"])
    lancedb.connect(tmp_db).create_table(ITEMS, older)
    summary = export_features(tmp_db, tmp_path / "features.parquet")
    features = pq.read_table(tmp_path / "features.parquet")
    assert summary["rows"] == features.num_rows == 20
    for column in ("risk_topk_mean", "frames_over_review", "hash_match"):
        assert features[column].null_count == 20
    assert features.schema.field("risk_topk_mean").type == pa.float32()
    assert features["hash_matched"].to_pylist() == [False] * 20
    assert features["decision"].to_pylist() == rows["decision"].to_pylist()


def test_bank_add_on_a_table_from_before_fingerprints_adds_the_entry_and_blocks_nothing(tmp_db):
    from conftest import sample_photo

    from shoplens.pipelines.moderation.bank_add import add_to_bank
    from shoplens.safety.policy import load_policy

    rows = synthetic_items(embedding_like(5, 16), moderated=True)
    lancedb.connect(tmp_db).create_table(ITEMS, rows.drop_columns(["pdq", "pdq_quality"]))
    summary = add_to_bank(tmp_db, [sample_photo("astronaut.png")], "sexual", load_policy())
    assert (summary["added"], summary["blocked_items"], summary["failed"]) == (1, 0, 0)
