"""The `shoplens` command as users and scripts run it: exit codes, stdout's last line, start-up."""

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import MICRO, write_manifest
from typer.testing import CliRunner

from shoplens.pipelines.cli import app

MICRO_FLAGS = ["--model", MICRO.model, "--pretrained", MICRO.pretrained, "--device", "cpu"]


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def shoplens(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from shoplens.pipelines.cli import main; main()", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env or os.environ.copy())


def test_help_is_fast_and_loads_no_model():
    probe = "import sys; from shoplens.pipelines.cli import app; print(sorted({'torch', 'open_clip', 'cv2', 'ray', 'lancedb'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    result = shoplens("ingest", "--help")
    assert result.returncode == 0 and "--pretrained" in result.stdout and "--ray-address" in result.stdout


@pytest.mark.slow
def test_uncached_weights_fail_fast_with_the_remedy(tmp_path, media_dir):
    manifest = write_manifest(media_dir / "c.csv", [{"item_id": "a", "kind": "product", "image": "coffee.png"}])
    env = os.environ.copy()
    env.pop("HF_HUB_OFFLINE")  # the network is simply not there: nothing listens on 127.0.0.1:443
    env["HF_ENDPOINT"] = "https://127.0.0.1"
    started = time.perf_counter()
    result = shoplens("ingest", str(manifest), "--db", str(tmp_path / "db"), "--pretrained", "laion2b_s34b_b79k", env=env)
    # Not a speed target: OpenCLIP's own retries take ~46 s, a fail-fast check well under that
    # even on a loaded machine (a 20 s bound failed when other suites shared the 2 cores).
    assert time.perf_counter() - started < 40
    assert result.returncode == 2
    assert "--pretrained /path/to/open_clip_model.safetensors" in result.stderr
    assert last_json(result.stdout)["exit_code"] == 2
    assert not (tmp_path / "db").exists()  # nothing was started or written


@pytest.mark.slow
def test_ingest_subprocess_prints_a_json_summary_last(tmp_path, media_dir):
    manifest = write_manifest(media_dir / "c.csv", [{"item_id": "a", "kind": "product", "title": "mug", "image": "coffee.png"}])
    result = shoplens("ingest", str(manifest), "--db", str(tmp_path / "db"), *MICRO_FLAGS)
    assert result.returncode == 0, result.stderr
    summary = last_json(result.stdout)
    assert (summary["items"], summary["ok"], summary["failed"], summary["exit_code"]) == (1, 1, 0, 0)
    assert summary["model"] == "open_clip/shoplens-micro/random-seed0"
    assert result.stdout.strip().count("\n") == 0  # nothing but the summary on stdout


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_exit_code_3_when_some_items_failed(tmp_path, media_dir):
    (media_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    manifest = write_manifest(
        media_dir / "c.csv",
        [{"item_id": "a", "kind": "product", "image": "coffee.png"}, {"item_id": "b", "kind": "product", "image": "broken.jpg"}],
    )
    result = CliRunner().invoke(app, ["ingest", str(manifest), "--db", str(tmp_path / "db"), *MICRO_FLAGS])
    assert result.exit_code == 3, result.output
    summary = last_json(result.stdout)
    assert (summary["ok"], summary["failed"]) == (1, 1)
    assert summary["errors"][0]["item_id"] == "b" and "corrupt image header" in summary["errors"][0]["error"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["ingest", "{manifest}", "--db", "{db}", "--device", "tpu"], "--device"),
        (["ingest", "{manifest}", "--db", "{db}", "--frames", "every:3"], "--frames"),
        (["ingest", "{manifest}", "--db", "{db}", "--model", "ViT-Nope", "--pretrained", "random"], "unknown OpenCLIP architecture"),
        (["ingest", "{tmp}/no-kind.csv", "--db", "{db}", *MICRO_FLAGS], "missing required column"),
        (["ingest", "{manifest}"], "--db"),
    ],
)
def test_usage_errors_exit_2(tmp_path, media_dir, args, message):
    manifest = write_manifest(media_dir / "c.csv", [{"item_id": "a", "kind": "product", "image": "coffee.png"}])
    write_manifest(tmp_path / "no-kind.csv", [{"item_id": "a", "image": "coffee.png"}])
    values = {"manifest": manifest, "db": tmp_path / "db", "tmp": tmp_path}
    result = CliRunner().invoke(app, [a.format(**values) for a in args])
    assert result.exit_code == 2
    assert message in result.output
    if "--db" in args:  # click's own usage errors aside, stdout ends with the JSON line
        assert last_json(result.stdout)["exit_code"] == 2


@pytest.mark.parametrize(
    "command", [["ingest", "{manifest}"], ["safety", "rescore"], ["safety", "bank", "add", "{image}", "--category", "topk_mean"]]
)
def test_a_policy_naming_a_reserved_column_is_refused_with_exit_2_and_the_reason(tmp_path, media_dir, command):
    """`topk_mean` would name the column risk_topk_mean, which the items table already has."""
    manifest = write_manifest(media_dir / "c.csv", [{"item_id": "a", "kind": "product", "image": "coffee.png"}])
    import yaml

    from shoplens.safety.policy import DEFAULT_POLICY

    shipped = yaml.safe_load(DEFAULT_POLICY.read_text())
    shipped["categories"]["topk_mean"] = {"review": 0.5, "block": 0.9, "prompts": ["a thing"]}
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(shipped))
    values = {"manifest": manifest, "image": media_dir / "coffee.png"}
    args = [a.format(**values) for a in command] + ["--db", str(tmp_path / "db"), "--policy", str(policy)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "category 'topk_mean' is reserved: its column risk_topk_mean is another column of the items table" in result.output
    assert last_json(result.stdout)["exit_code"] == 2
    assert not (tmp_path / "db").exists()  # refused before anything was opened or written


def test_exit_code_1_when_the_job_itself_fails(tmp_path):
    """A database whose data files were lost under it: the command starts, reading fails, and it
    says so in one JSON line with exit code 1 (not a usage error: the flags were right)."""
    import lancedb

    from benchmarks.synthetic import embedding_like, synthetic_items

    db = str(tmp_path / "db")
    lancedb.connect(db).create_table("items", synthetic_items(embedding_like(20, 16)))
    for data in (tmp_path / "db" / "items.lance" / "data").iterdir():
        data.unlink()
    out = tmp_path / "features.parquet"
    for args in (
        ["features", "export", "--db", db, "--out", str(out)],
        ["review", "export", "--db", db, "--out", str(tmp_path / "q")],
        ["search", "--db", db, "--item", "i0000001"],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        summary = last_json(result.stdout)
        assert summary["exit_code"] == 1 and "Not found" in summary["error"], summary
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()  # whole or not at all


def test_ingest_help_shows_every_default_in_words():
    result = CliRunner().invoke(app, ["ingest", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.split())
    for words in (
        "(default: the manifest's folder)",
        "(default: a running one, else a local one)",
        "(default: the database's own: the last one given to a job or calibrated, else the shipped one)",
    ):
        assert words in text, words


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["categories"]["drugs"]["text_rules"].update(patterns=["(unclosed"]), "invalid regular expression"),
        (lambda d: d["prompt_bank"].update(fields=["image", "alt_text"]), "prompt_bank.fields"),
    ],
    ids=["invalid-regex", "unknown-field"],
)
def test_a_policy_with_an_invalid_text_rule_or_field_is_refused_with_exit_2(tmp_path, media_dir, change, message):
    import yaml

    from shoplens.safety.policy import DEFAULT_POLICY

    document = yaml.safe_load(DEFAULT_POLICY.read_text())
    change(document)
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(document))
    manifest = write_manifest(media_dir / "c.csv", [{"item_id": "a", "kind": "product", "image": "coffee.png"}])
    result = CliRunner().invoke(app, ["ingest", str(manifest), "--db", str(tmp_path / "db"), "--policy", str(tmp_path / "policy.yaml")])
    assert result.exit_code == 2 and message in result.output
    assert last_json(result.stdout)["exit_code"] == 2 and not (tmp_path / "db").exists()
