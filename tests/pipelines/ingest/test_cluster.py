"""shoplens on a real two-node Ray cluster (a head with its job server on localhost and a worker,
started with `ray start` on this machine, token authentication on, as Ray 2.60 has it by default):
`shoplens ingest --ray-address`, and `ray job submit` of an ingest whose manifest, media and
database are all on an S3-compatible server."""

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import lancedb
import pytest
from conftest import MICRO, SAMPLE_PHOTOS, sample_photo, write_manifest

from shoplens.pipelines.search.searcher import Searcher, SearchFilters
from shoplens.pipelines.store.database import ItemStore
from shoplens.pipelines.store.schemas import ITEMS

pytestmark = pytest.mark.slow
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive_nodes(address: str, env: dict) -> int:
    probe = f"import ray; ray.init(address={address!r}, log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    return int(out.stdout.strip() or 0)


def agent_ports() -> list[str]:
    """A node's agent ports, free ones: two nodes on one machine (or another test's cluster) would
    otherwise share Ray's fixed defaults, and the job agent of the one that loses cannot serve jobs."""
    names = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port")
    return [f"--{name}={free_port()}" for name in names]


@dataclass(frozen=True)
class Cluster:
    address: str  # the GCS, for drivers: host:port
    dashboard: str  # the job server: http://127.0.0.1:port
    env: dict  # the token, and the S3 server's endpoint, as every node has them


@pytest.fixture(scope="module")
def two_node_cluster(s3_server):
    # A short temp dir of its own: Ray's socket paths must stay short, and `ray.init()` elsewhere
    # must not find this cluster in the default /tmp/ray.
    temp_dir = tempfile.mkdtemp(prefix="r", dir="/tmp")
    env = {**os.environ, **s3_server, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    address, dashboard_port = f"127.0.0.1:{free_port()}", free_port()
    common = ["--num-cpus=2", f"--temp-dir={temp_dir}", "--block"]
    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            f"--port={address.split(':')[1]}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            *agent_ports(),
            *common,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    nodes = [head]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and alive_nodes(address, env) < 1:
            time.sleep(1)
        nodes.append(
            subprocess.Popen(
                [RAY, "start", f"--address={address}", *agent_ports(), *common],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        while time.monotonic() < deadline and alive_nodes(address, env) < 2:
            time.sleep(1)
        assert alive_nodes(address, env) == 2, "the two-node cluster did not come up"
        yield Cluster(address, f"http://127.0.0.1:{dashboard_port}", env)
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
    address, env = two_node_cluster.address, two_node_cluster.env
    rows = []
    for n, name in enumerate(SAMPLE_PHOTOS):
        (tmp_path / name).write_bytes(sample_photo(name).read_bytes())
        rows.append({"item_id": f"p{n}", "kind": "product", "title": f"item {n}", "image": name})
    manifest = write_manifest(tmp_path / "catalog.csv", rows)
    command = [
        sys.executable,
        "-c",
        "from shoplens.pipelines.cli import main; main()",
        "ingest",
        str(manifest),
        "--db",
        str(tmp_path / "db"),
        "--model",
        MICRO.model,
        "--pretrained",
        MICRO.pretrained,
        "--device",
        "cpu",
        "--ray-address",
        address,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["ok"], summary["failed"]) == (len(SAMPLE_PHOTOS), 0)
    stored = lancedb.connect(str(tmp_path / "db")).open_table(ITEMS).to_arrow()
    assert sorted(stored["item_id"].to_pylist()) == sorted(r["item_id"] for r in rows)
    assert all(v is not None for v in stored["vector"].to_pylist())


def test_a_driver_without_the_token_is_refused(two_node_cluster):
    assert alive_nodes(two_node_cluster.address, {**two_node_cluster.env, "RAY_AUTH_TOKEN": "0" * 64}) == 0


def submit(cluster: Cluster, *args: str) -> dict:
    """`ray job submit -- shoplens ingest ...`: waits for the job and returns its JSON summary."""
    shoplens = os.path.join(os.path.dirname(sys.executable), "shoplens")
    deadline = time.monotonic() + 60
    while True:
        result = subprocess.run(
            [RAY, "job", "submit", "--address", cluster.dashboard, "--", shoplens, "ingest", *args],
            capture_output=True,
            text=True,
            env=cluster.env,
            timeout=240,
        )
        # The head's job agent starts a little after the node itself; until then nothing is submitted.
        if "No available agent to submit job" not in result.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert result.returncode == 0 and "succeeded" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(next(line for line in reversed(result.stdout.splitlines()) if line.startswith('{"command": "ingest"')))


def test_ray_job_submit_ingests_a_catalog_on_s3_into_a_database_on_s3(two_node_cluster, s3, monkeypatch):
    lines = ["item_id,kind,title,image"]
    for n, name in enumerate(SAMPLE_PHOTOS):
        s3.put_object(Bucket="shop", Key=f"job/media/{name}", Body=sample_photo(name).read_bytes())
        lines.append(f"p{n},product,item {n},media/{name}")
    s3.put_object(Bucket="shop", Key="job/catalog.csv", Body="\n".join(lines).encode())
    args = (
        "s3://shop/job/catalog.csv",
        "--db",
        "s3://shop/job/db",
        "--model",
        MICRO.model,
        "--pretrained",
        MICRO.pretrained,
        "--device",
        "cpu",
    )

    first = submit(two_node_cluster, *args)
    assert (first["ok"], first["failed"], first["written"]) == (len(SAMPLE_PHOTOS), 0, len(SAMPLE_PHOTOS))
    store = ItemStore("s3://shop/job/db")  # this process's environment points at the same server
    table = store.existing(ITEMS)
    stored = table.to_arrow()
    assert sorted(stored["item_id"].to_pylist()) == sorted(f"p{n}" for n in range(len(SAMPLE_PHOTOS)))
    assert set(stored["media_uri"].to_pylist()) == {f"s3://shop/job/media/{name}" for name in SAMPLE_PHOTOS}
    assert all(v is not None for v in stored["vector"].to_pylist())

    again = submit(two_node_cluster, *args)  # a re-run is a no-op: nothing written, no new version
    assert (again["skipped"], again["written"]) == (len(SAMPLE_PHOTOS), 0)
    assert store.existing(ITEMS).version == table.version

    # Random weights decide at random: blocked items count here, the search itself is under test.
    hits = Searcher("s3://shop/job/db", device="cpu").by_item("p0", 3, SearchFilters(include_blocked=True))
    assert len(hits) == 3 and "p0" not in {hit["item_id"] for hit in hits}
