"""benchmarks/gpu.py, the one command a GPU host runs: it must say at once where there is no GPU,
and every section must run (checked on the CPU with a tiny model, where its code is the GPU's)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu.py"


def test_without_a_gpu_the_gpu_benchmark_says_so_within_five_seconds(tmp_path):
    env = os.environ | {"PATH": str(Path(sys.executable).parent)}  # no nvidia-smi on it, whatever the host
    started = time.perf_counter()
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "figures.json")], env=env, capture_output=True, text=True)
    assert time.perf_counter() - started < 5
    assert run.returncode == 2 and "no GPU here" in run.stderr and not (tmp_path / "figures.json").exists()


@pytest.mark.slow
def test_every_section_of_the_gpu_benchmark_runs(tmp_path):
    out = tmp_path / "figures.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--cpu-dry-run", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(out.read_text())
    sections = ("model_only", "nvjpeg", "pixel_models", "mixed_decode", "ingest", "video")
    assert not [name for name in sections if "error" in figures[name]], run.stderr[-3000:]
    assert figures["mixed_decode"]["all_same_as_cpu"]
    assert figures["mixed_decode"]["images"]["truncated"]["error"]  # refused by both paths, alike
    assert {f["ok"] for f in figures["ingest"].values() if isinstance(f, dict) and "ok" in f} == {16}
    assert "mixed decode batch gives the CPU path's rows" in run.stdout


def test_the_ocr_quality_set_renders_what_it_says_and_is_read_back():
    """benchmarks/ocr.py's generated set: half contact details, half hard negatives, and its
    figures come from real reads (a set of six, read by the bundled models)."""
    sys.path.insert(0, str(SCRIPT.parents[1]))
    from benchmarks.ocr import quality, text_set

    made = text_set(6)
    assert [m["contact"] for m in made] == [True, False] * 3 and [m["upright"] for m in made] == [True, True, False] * 2
    assert all(m["image"].shape == (480, 640, 3) and m["height"] >= 12 for m in made)
    figures = quality(6, threads=1)
    assert figures["tp"] + figures["fn"] == 3 and figures["tn"] + figures["fp"] == 3
    assert figures["cer_horizontal_20px"] < 0.2 and figures["contact_recall"] > 0.5
