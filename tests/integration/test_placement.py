"""Placement on a real multi-node Ray (several raylets on this machine): roles land where `spec.resources`
says, and a spec asking for resources no node has, or more GPUs in total than the cluster has, is refused before
anything starts, in one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_roles_land_on_the_nodes_the_spec_names(tiny_model, tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    res = subprocess.run([sys.executable, str(Path(__file__).with_name("placement_probe.py")), tiny_model,
                          str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["landed"] == out["expected"]  # rollout by custom resource, judge by label, trainer by GPU
    assert len(set(out["landed"].values())) == 3
    assert 0.0 <= out["reward"] <= 1.0
    # a ladder each of whose roles fits a node, but that asks 2 GPUs in total of a cluster with 1, is refused in
    # one line before anything starts
    refused = out["too_many_gpus"]
    lines = refused["stderr"].strip().splitlines()
    assert refused["code"] == 2 and len(lines) == 1 and "Traceback" not in refused["stderr"], refused["stderr"]
    assert lines[0].startswith("error: resources: the ladder asks for 2 GPU in total (rollout 1 x 1, trainer 1 x 1)")
    assert "the cluster has 1 GPU on 4 live nodes" in lines[0] and not refused["stored"]


def test_a_spec_no_node_can_host_is_refused_in_one_line(tiny_model, tmp_path):
    spec = {"name": "too-big", "workdir": str(tmp_path / "w"), "student": {"base": tiny_model},
            "judge": {"initial": {"kind": "model", "path": tiny_model}},
            "task": {"source": {"kind": "builtin", "train_size": 50}},
            "resources": {"trainer": {"cpus": 1, "gpus": 8}}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    res = subprocess.run([sys.executable, "-m", "ladder.cli", "run", str(path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("error: resources.trainer: no node of the cluster has 1 CPU, 8 GPU")
    from ladder.registry import Registry

    assert Registry.find("too-big", f"sqlite:///{tmp_path / 'w' / 'mlflow.db'}") is None  # nothing was started
