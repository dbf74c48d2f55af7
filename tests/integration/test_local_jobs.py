"""A ladder as a local background job (no cluster): `submit` without an address, `stop --now`, `resume --wait`;
a version promoted by hand while its controller is gone."""
import json
import os

import pytest
from service import ladder, progress_of, service_spec, steps_logged, wait_for  # tests/integration

pytestmark = pytest.mark.integration


def test_local_submit_stop_now_resume(tiny_model, tmp_path):
    """Without a cluster: `submit` runs the ladder in the background on a Ray of its own, `stop --now` aborts
    the step (progress goes back to the last checkpoint, the job's process ends), `resume --wait` finishes
    it; the steps redone are at most one checkpoint interval."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    name, work = "svc-local", tmp_path / "w"
    uri = f"sqlite:///{work / 'mlflow.db'}"
    # 12 steps: the `stop --now` below (a CLI process, seconds on a busy machine) lands well before the rung's end
    spec = service_spec(tiny_model, work, name, None, rungs=1, checkpoint_every=3,
                        train={"lr": 1e-4, "kl_coef": 0.0, "steps": 12, "prompts_per_step": 16},
                        promotion={"policy": "auto", "tolerance": 1.0, "min_auc": 0.0, "collapse_share": 1.0})
    sub = json.loads(ladder(env, "submit", str(spec), "--json").stdout)
    assert sub["submission"].startswith("local-")
    wait_for(name, uri, lambda p: p.step >= 3 and p.checkpoint)
    out = json.loads(ladder(env, "stop", name, "--now", "--workdir", str(work), "--json").stdout)
    assert out["state"] == "stopped"
    stopped = progress_of(name, uri)
    assert stopped.step % 3 == 0 and stopped.checkpoint.endswith(f"step-{stopped.step:05d}")
    status = json.loads(ladder(env, "status", name, "--workdir", str(work), "--json").stdout)
    assert status["state"] == "stopped" and status["live"] is None  # its local job's process has ended

    ladder(env, "resume", name, "--workdir", str(work), "--wait")
    done = progress_of(name, uri)
    assert done.state.value == "completed" and done.job == sub["job"]
    steps = steps_logged(uri, name, 1)
    assert sorted(set(steps)) == list(range(1, 13))
    assert len(steps) - 12 <= 3  # steps after the checkpoint were redone, no more
