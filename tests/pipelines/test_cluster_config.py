import json
from pathlib import Path

import jsonschema
import ray
import yaml

CONFIG = Path(__file__).parents[2] / "ray_cluster.yaml"


def test_cluster_config_validates_against_the_installed_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load(CONFIG.read_text())
    jsonschema.validate(config, schema)
    nodes = config["available_node_types"]
    assert config["head_node_type"] in nodes
    assert any(node["resources"].get("GPU") for node in nodes.values())  # embedding workers
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])


def test_cluster_config_holds_no_secrets():
    text = CONFIG.read_text().lower()
    for word in ("aws_secret", "secret_access_key", "password", "token:", "ssh_private_key"):
        assert word not in text


def test_every_node_starts_ray_with_token_authentication_from_a_mounted_token():
    config = yaml.safe_load(CONFIG.read_text())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all(c.startswith("RAY_AUTH_MODE=token ") for c in starts), key
        assert "test -s ~/.ray/auth_token" in config[key][: config[key].index(starts[0])], key  # no token: no start
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # the operator's file, never this repo's
    assert not any("RAY_AUTH_TOKEN=" in c for key in config if key.endswith("commands") for c in config[key] or [])


def test_gpu_workers_install_onnx_runtimes_cuda_build_after_the_cpu_one():
    config = yaml.safe_load(CONFIG.read_text())
    gpu_nodes = [node for node in config["available_node_types"].values() if node["resources"].get("GPU")]
    for node in gpu_nodes:
        commands = " && ".join(node["worker_setup_commands"])
        assert "shoplens[gpu]" in commands and "--force-reinstall --no-deps onnxruntime-gpu" in commands
        assert commands.index("shoplens[gpu]") < commands.index("--force-reinstall")
