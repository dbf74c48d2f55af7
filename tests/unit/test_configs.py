"""Every shipped config is parsed: example specs, the Ray cluster launcher file, KubeRay manifests."""
from pathlib import Path

import pytest
import yaml

from ladder.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))
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
    from ladder.spec import parse_spec

    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    rays = [d for d in docs if d["kind"] in ("RayJob", "RayCluster")]
    assert rays and all(d["apiVersion"] == "ray.io/v1" for d in rays)
    assert all(d["kind"] == "ConfigMap" for d in docs if d not in rays)
    for d in rays:  # token authentication on, with a Ray version that has it
        cluster = d["spec"]["rayClusterSpec"] if d["kind"] == "RayJob" else d["spec"]
        assert cluster["authOptions"]["mode"] == "token" and cluster["rayVersion"] >= "2.52"
        if d["kind"] == "RayJob":  # the spec it runs is carried in a ConfigMap mounted where the entrypoint reads
            spec_file = d["spec"]["entrypoint"].split()[-1]
            mount = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["mountPath"]
            config = next(c for c in docs if c["kind"] == "ConfigMap")
            assert spec_file == f"{mount}/{next(iter(config['data']))}"
            assert parse_spec(yaml.safe_load(next(iter(config["data"].values())))).name


def launcher_nodes(cfg: dict) -> list[dict]:
    """ray_cluster.yaml's node types as `ray.nodes()` entries (what the placement check reads)."""
    return [{"Alive": True, "Resources": t["resources"], "Labels": {}} for t in cfg["available_node_types"].values()]


def kuberay_nodes(cluster: dict) -> list[dict]:
    import json

    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    nodes = []
    for g in groups:
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        custom = json.loads(json.loads(g["rayStartParams"].get("resources", '"{}"')))
        nodes.append({"Alive": True, "Resources": {"CPU": float(limits["cpu"]),
                                                    "GPU": float(limits.get("nvidia.com/gpu", 0)), **custom}})
    return nodes


def test_the_gpu_example_fits_the_shipped_clusters():
    """Every role of examples/gpu-cluster.yaml has a node type to land on, in ray_cluster.yaml and in the
    KubeRay RayCluster; the shipped CPU demo would be refused on neither."""
    from cluster.placement import unplaceable

    spec = load_spec(ROOT / "examples" / "gpu-cluster.yaml")
    assert spec.resources.uses_gpu
    launcher = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    assert unplaceable(spec, launcher_nodes(launcher)) is None
    raycluster = yaml.safe_load((ROOT / "cluster" / "kuberay" / "raycluster.yaml").read_text())
    assert unplaceable(spec, kuberay_nodes(raycluster["spec"])) is None
    assert any("judge-ladder[gpu]" in c for c in launcher["setup_commands"])
    assert all("RAY_AUTH_MODE=token" in c for c in launcher["head_start_ray_commands"] + launcher[
        "worker_start_ray_commands"] if "ray start" in c)
