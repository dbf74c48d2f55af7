"""A rung end to end on real engines: GRPO learns against the verifier; a model-judge rung completes."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def spec_dict(student, judge, **overrides):
    spec = {
        "name": "test-rung", "seed": 0, "rungs": 1,
        "student": {"base": student},
        "judge": {"initial": judge},
        "task": {"source": {"kind": "builtin", "name": "arithmetic", "train_size": 2000}, "eval_size": 64},
        "rollout": {"workers": 1, "group_size": 8, "max_tokens": 32, "kv_cache_gib": 0.25},
        "train": {"lr": 2e-4, "kl_coef": 0.01, "steps": 30, "prompts_per_step": 16},
    }
    spec.update(overrides)
    return spec


def test_grpo_learns_against_the_verifier(ray_local, tiny_model):
    """On a small fixed prompt set (48 prompts, each seen ~10 times) the sampled reward must rise."""
    from ladder.rung import ResolvedJudge, Rung
    from ladder.spec import parse_spec
    from ladder.tasks import build_task

    spec = spec_dict(tiny_model, {"kind": "verifier", "function": "ladder.tasks.arithmetic:verify"})
    spec["task"]["source"]["train_size"] = 48
    spec = parse_spec(spec)
    rung = Rung(spec, build_task(spec.task, spec.seed), tiny_model,
                ResolvedJudge("verifier", "ladder.tasks.arithmetic:verify", "verifier"), spec.seed)
    try:
        rung.ready()
        checksum = ray_local.get(rung.trainer.parameter_checksum.remote())
        steps = [rung.step() for _ in range(spec.train.steps)]
        rewards = [m["reward/mean"] for m in steps]
        changed = ray_local.get(rung.trainer.parameter_checksum.remote()) != checksum
    finally:
        rung.shutdown()
    k = 8
    first, last = sum(rewards[:k]) / k, sum(rewards[-k:]) / k
    assert changed
    assert last > first + 0.05, f"reward did not rise: first {first:.3f}, last {last:.3f}"
    assert steps[-1]["train/kl"] > 0 and max(m["train/logprob_mismatch"] for m in steps) < 1e-3


def test_model_judge_rung_runs_to_completion(tiny_model, tmp_path):
    spec = spec_dict(tiny_model, {"kind": "model", "path": tiny_model},
                     workdir=str(tmp_path / "work"), train={"steps": 2, "prompts_per_step": 4, "lr": 1e-4})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "student"
    env = {**os.environ, "RAY_ADDRESS": ""}
    res = subprocess.run([sys.executable, "-m", "ladder.cli", "train-rung", str(path), "--json", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    steps = [line for line in lines if "step" in line]
    assert [s["step"] for s in steps] == [1, 2]
    for s in steps:
        assert 0.0 <= s["reward/mean"] <= 1.0 and math.isfinite(s["train/loss"])
        assert s["judge/parse_failure_rate"] == 0.0
        assert s["reward/std"] > 0, "a model judge gives graded verdicts, not one constant"
    assert (out / "model.safetensors").is_file()
    assert (out / "model.safetensors").read_bytes() != (Path(tiny_model) / "model.safetensors").read_bytes()


def test_train_rung_reports_a_missing_model_in_one_line(tmp_path):
    spec = spec_dict(str(tmp_path / "no-such-model"), {"kind": "verifier", "function": "ladder.tasks.arithmetic:verify"})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = subprocess.run([sys.executable, "-m", "ladder.cli", "train-rung", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "no-such-model: no such model directory" in res.stderr
    assert "Traceback" not in res.stderr
