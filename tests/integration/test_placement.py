"""Placement on a real multi-node Ray (several raylets on this machine): roles land where `spec.resources`
says, and a spec asking for resources no node has, or more GPUs in total than the cluster has, is refused before
anything starts, in one line (both asked of the probe's cluster: one Ray for the three)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    line = one_line_refusal(out["too_many_gpus"])
    assert line.startswith("error: resources: the ladder asks for 2 GPU in total (rollout 1 x 1, trainer 1 x 1)")
    assert "the cluster has 1 GPU on 4 live nodes" in line
    # a trainer that asks 8 GPUs: no node of the cluster can host it
    assert one_line_refusal(out["too_big"]).startswith("error: resources.trainer: no node of the cluster has 1 CPU, 8 GPU")


def one_line_refusal(refused: dict) -> str:
    """The one line of a `ladder run` refused before anything started (exit 2, no traceback, no MLflow store)."""
    lines = refused["stderr"].strip().splitlines()
    assert refused["code"] == 2 and len(lines) == 1 and "Traceback" not in refused["stderr"], refused["stderr"]
    assert not refused["stored"]
    return lines[0]
