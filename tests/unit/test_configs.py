"""Every shipped config is parsed: example specs, the Ray cluster launcher file, KubeRay manifests."""
from pathlib import Path

import pytest
import yaml

from ladder.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
KUBERAY = sorted((ROOT / "cluster" / "kuberay").glob("*.yaml"))


def test_there_are_examples():
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_spec_validates(path):
    spec = load_spec(path)
    assert spec.name


def test_ray_cluster_yaml_is_a_launcher_config():
    cfg = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "head_start_ray_commands",
                "worker_start_ray_commands"):
        assert key in cfg, key
    assert cfg["head_node_type"] in cfg["available_node_types"]
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest_parses(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs and all(d["apiVersion"].startswith("ray.io/") for d in docs)
    assert all(d["kind"] in ("RayJob", "RayCluster") for d in docs)
