"""A ladder as a local background job (no cluster): `submit` without an address, `stop --now`, `resume --wait`;
a version promoted by hand while its controller is gone."""
import json
import os

import pytest
from service import ladder, progress_of, promote_by_hand, service_spec, steps_logged, wait_for  # tests/integration

pytestmark = pytest.mark.integration


def test_local_submit_stop_now_resume(tiny_model, tmp_path):
    """Without a cluster: `submit` runs the ladder in the background on a Ray of its own, `stop --now` aborts
    the step (progress goes back to the last checkpoint, the job's process ends), `resume --wait` finishes
    it; the steps redone are at most one checkpoint interval. A version promoted by hand while the controller is
    gone does not change the rung's judge or student when it restarts (they were pinned at the rung's start)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    name, work = "svc-local", tmp_path / "w"
    uri = f"sqlite:///{work / 'mlflow.db'}"
    spec = service_spec(tiny_model, work, name, None, rungs=1, checkpoint_every=3,
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
    hand = promote_by_hand(env, name, uri, tiny_model, "--workdir", str(work))  # `judge` now names a model, not the verifier

    ladder(env, "resume", name, "--workdir", str(work), "--wait")
    done = progress_of(name, uri)
    assert done.state.value == "completed" and done.job == sub["job"]
    # the rung in progress kept its pinned judge and student: the verifier and the base, not the version promoted
    # by hand meanwhile (with `init: previous`, a re-read alias would have changed both)
    from ladder.registry import Registry

    rung1 = [v for v in Registry(name, uri).versions() if v.tags.get("ladder.rung") == "1"]
    assert len(rung1) == 1 and rung1[0].version != hand
    assert rung1[0].tags["ladder.judge"] == "verifier:ladder.tasks.arithmetic:exact", rung1[0].tags
    assert rung1[0].tags["ladder.student_init"] == "base"
    steps = steps_logged(uri, name, 1)
    assert sorted(set(steps)) == list(range(1, 9))
    assert len(steps) - 8 <= 3  # steps after the checkpoint were redone, no more
