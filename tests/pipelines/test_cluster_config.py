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
