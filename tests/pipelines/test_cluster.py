"""`shoplens ingest --ray-address` on a real two-node Ray cluster (a head and a worker started with
`ray start` on this machine, token authentication on, as Ray 2.60 has it by default)."""

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time

import lancedb
import pytest
from conftest import MICRO, SAMPLE_PHOTOS, sample_photo, write_manifest

from pipelines.store import ITEMS

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive_nodes(address: str, env: dict) -> int:
    probe = f"import ray; ray.init(address={address!r}, log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    return int(out.stdout.strip() or 0)


@pytest.fixture(scope="module")
def two_node_cluster():
    # A short temp dir of its own: Ray's socket paths must stay short, and `ray.init()` elsewhere
    # must not find this cluster in the default /tmp/ray.
    temp_dir = tempfile.mkdtemp(prefix="r", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    address = f"127.0.0.1:{free_port()}"
    common = ["--num-cpus=2", f"--temp-dir={temp_dir}", "--block"]
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    head = subprocess.Popen([ray, "start", "--head", f"--port={address.split(':')[1]}", "--include-dashboard=false", *common],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    nodes = [head]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and alive_nodes(address, env) < 1:
            time.sleep(1)
        nodes.append(subprocess.Popen([ray, "start", f"--address={address}", *common],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while time.monotonic() < deadline and alive_nodes(address, env) < 2:
            time.sleep(1)
        assert alive_nodes(address, env) == 2, "the two-node cluster did not come up"
        yield address, env
    finally:
        for node in reversed(nodes):
            node.terminate()
        for node in nodes:
            try:
                node.wait(timeout=20)
            except subprocess.TimeoutExpired:
                node.kill()
        subprocess.run(["pkill", "-9", "-f", temp_dir])  # any process of this cluster still running


def test_ingest_joins_a_two_node_cluster(two_node_cluster, tmp_path):
    address, env = two_node_cluster
    rows = []
    for n, name in enumerate(SAMPLE_PHOTOS):
        (tmp_path / name).write_bytes(sample_photo(name).read_bytes())
        rows.append({"item_id": f"p{n}", "kind": "product", "title": f"item {n}", "image": name})
    manifest = write_manifest(tmp_path / "catalog.csv", rows)
    command = [sys.executable, "-c", "from pipelines.cli import main; main()", "ingest", str(manifest), "--db", str(tmp_path / "db"),
               "--model", MICRO.model, "--pretrained", MICRO.pretrained, "--device", "cpu", "--ray-address", address]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["ok"], summary["failed"]) == (len(SAMPLE_PHOTOS), 0)
    stored = lancedb.connect(str(tmp_path / "db")).open_table(ITEMS).to_arrow()
    assert sorted(stored["item_id"].to_pylist()) == sorted(r["item_id"] for r in rows)
    assert all(v is not None for v in stored["vector"].to_pylist())


def test_a_driver_without_the_token_is_refused(two_node_cluster):
    address, env = two_node_cluster
    assert alive_nodes(address, {**env, "RAY_AUTH_TOKEN": "0" * 64}) == 0
