"""Saved ladder progress (JSON round trip, phase transitions), placement checks, cluster addresses."""
import pytest

from cluster.placement import actor_options, unplaceable
from ladder.progress import JudgeQuality, Phase, Progress, RungResults, State
from cluster.connect import Address, ClusterError
from ladder.spec import SpecError, parse_spec


def test_progress_round_trips_through_json():
    p = Progress("lad", "job1", state=State.AWAITING_PROMOTION, phase=Phase.AWAIT, rung=2, attempt=1, step=8,
                 cursor={"epoch": 1, "index": 5}, checkpoint="runs:/r/checkpoints/step-00008", candidate="3",
                 judge="lad/v2", parent_run="p", rung_run="r", submission="s",
                 results=RungResults(student_init="v1", final_accuracy=0.5, current_judge=JudgeQuality(0.6, 0.7, 0.1),
                                     history=[{"version": "2", "status": "promoted"}]))
    back = Progress.from_json(p.to_json())
    assert back == p and back.state is State.AWAITING_PROMOTION and back.phase is Phase.AWAIT
    assert back.rung_uid == "job1-2-1" and back.active


def test_next_rung_and_retry_reset_the_rung_but_keep_the_job():
    p = Progress("lad", "job1", state=State.RUNNING, phase=Phase.GATE, rung=2, step=8, checkpoint="c", candidate="3",
                 rung_run="r", results=RungResults(stage_restarts=1), parent_run="p")
    nxt = p.next_rung()
    assert (nxt.rung, nxt.attempt, nxt.step, nxt.phase, nxt.checkpoint, nxt.candidate, nxt.rung_run, nxt.results) \
        == (3, 0, 0, Phase.TRAIN, None, None, None, RungResults())
    assert nxt.job == "job1" and nxt.parent_run == "p" and nxt.updated_at > 0
    retry = p.retry_rung()
    assert (retry.rung, retry.attempt, retry.step, retry.checkpoint) == (2, 1, 0, None)
    assert retry.rung_uid != p.rung_uid  # a retried rung registers its own version
    assert not p.to(state=State.STOPPED).active and not p.to(state=State.COMPLETED).active


def test_progress_reads_fields_it_does_not_know_yet_without_failing():
    p = Progress.from_json('{"ladder": "a", "job": "j", "state": "stopped", "phase": "train", "later_field": 1}')
    assert p.state is State.STOPPED


def test_progress_reads_results_saved_before_they_were_typed():
    """Older controllers saved the judge's quality as a list and no verifier flag (the judge's label says it)."""
    old = ('{"ladder": "a", "job": "j", "state": "running", "phase": "gate", "judge": "verifier:task", "results": '
           '{"student_init": "v2", "current_judge": [0.6, 0.65, 0.1], "start_accuracy": 0.1, "stage_restarts": 1}}')
    r = Progress.from_json(old).results
    assert r.current_judge == JudgeQuality(accuracy=0.6, auc=0.65, identical_share=0.1) and r.judge_is_verifier
    assert (r.student_init, r.start_accuracy, r.final_accuracy, r.stage_restarts, r.history) == ("v2", 0.1, None, 1, [])
    model_judged = Progress.from_json('{"ladder": "a", "job": "j", "judge": "a/v1", "results": {}}')
    assert model_judged.results == RungResults()


def spec(**resources):
    return parse_spec({"name": "p", "student": {"base": "m"}, "judge": {"initial": {"kind": "model", "path": "m"}},
                       "task": {"source": {"kind": "builtin"}}, "resources": resources})


def node(cpus, gpus=0, custom=None, labels=None, alive=True):
    return {"Alive": alive, "Resources": {"CPU": cpus, "GPU": gpus, **(custom or {})}, "Labels": labels or {}}


def test_roles_are_placed_by_cpus_gpus_custom_resources_and_labels():
    s = spec(trainer={"cpus": 2, "gpus": 1, "node_labels": {"tier": "train"}},
             judge={"cpus": 1, "custom": {"judge_node": 1}})
    assert actor_options(s.resources.trainer) == {"num_cpus": 2, "num_gpus": 1, "label_selector": {"tier": "train"}}
    assert actor_options(s.resources.judge) == {"num_cpus": 1, "num_gpus": 0, "resources": {"judge_node": 1}}
    cluster = [node(4), node(4, gpus=1, labels={"tier": "train"}), node(2, custom={"judge_node": 1})]
    assert unplaceable(s, cluster) is None
    no_label = [node(4), node(4, gpus=1), node(2, custom={"judge_node": 1})]
    assert unplaceable(s, no_label).startswith("resources.trainer: no node of the cluster has 2 CPU, 1 GPU, "
                                               "label tier=train")
    dead_judge_node = [node(4), node(4, gpus=1, labels={"tier": "train"}), node(2, custom={"judge_node": 1},
                                                                                   alive=False)]
    assert "resources.judge" in unplaceable(s, dead_judge_node)


def test_resources_are_validated():
    with pytest.raises(SpecError, match="resources.trainer.gpus"):
        spec(trainer={"gpus": -1})
    with pytest.raises(SpecError, match="resources.rollout.memory"):
        spec(rollout={"memory": 1})


def test_addresses_cluster_and_dashboard():
    assert Address.resolve("127.0.0.1:6379").cluster() == "127.0.0.1:6379"
    dash = Address.resolve("http://127.0.0.1:8265/")
    assert dash.is_http and dash.api_server() == "http://127.0.0.1:8265"
    with pytest.raises(ClusterError, match="dashboard's address"):
        dash.cluster()


def test_local_when_no_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert Address.resolve(None).local
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert Address.resolve(None).raw == "10.0.0.1:6379"


def _decided(decision, rung=1, attempt=0, rungs=3, on_reject="stop", max_retries=1):
    from types import SimpleNamespace

    from ladder.progress import after_decision

    p = Progress("l", "job", state=State.RUNNING, phase=Phase.AWAIT, rung=rung, attempt=attempt, step=20,
                 candidate="4", judge="v3", rung_run="run", results=RungResults(final_accuracy=0.5))
    return after_decision(p, decision, rungs, SimpleNamespace(on_reject=on_reject, max_retries=max_retries),
                          [{"version": "4", "status": decision}])


def test_a_promotion_moves_on_to_the_next_rung_with_the_history():
    p = _decided("promoted", rung=1)
    assert (p.rung, p.phase, p.state, p.attempt, p.step, p.candidate, p.rung_run) == (2, Phase.TRAIN, State.RUNNING,
                                                                                      0, 0, None, None)
    assert p.results == RungResults(history=[{"version": "4", "status": "promoted"}])


def test_a_promotion_of_the_last_rung_completes_the_ladder():
    p = _decided("promoted", rung=3, rungs=3)
    assert (p.rung, p.phase, p.state) == (3, Phase.DONE, State.COMPLETED)
    assert p.results.final_accuracy == 0.5 and p.results.history[-1]["status"] == "promoted"


def test_a_rejection_stops_the_ladder_by_default():
    p = _decided("rejected", on_reject="stop")
    assert (p.phase, p.state, p.error, p.results.ended) == (Phase.DONE, State.STOPPED, "rung 1 rejected", "rejected")


def test_on_reject_retry_trains_the_rung_again_within_max_retries():
    p = _decided("rejected", rung=2, attempt=0, on_reject="retry", max_retries=2)
    assert (p.rung, p.attempt, p.phase, p.state, p.step, p.candidate) == (2, 1, Phase.TRAIN, State.RUNNING, 0, None)
    assert p.rung_uid == "job-2-1"  # a new version for the retry, never the rejected one again
    again = _decided("rejected", rung=2, attempt=1, on_reject="retry", max_retries=2)
    assert again.attempt == 2 and again.phase is Phase.TRAIN
    spent = _decided("rejected", rung=2, attempt=2, on_reject="retry", max_retries=2)
    assert (spent.phase, spent.state, spent.results.ended) == (Phase.DONE, State.STOPPED, "rejected")


def test_status_shows_a_pending_decision_only_while_awaiting_one():
    waiting = Progress("l", "job", state=State.AWAITING_PROMOTION, candidate="2").summary()
    assert waiting["pending_decision"] == "2" and waiting["state"] == "awaiting_promotion"
    assert Progress("l", "job", state=State.RUNNING, candidate="2").summary()["pending_decision"] is None


# written by a controller of the flat layout (before ladder/ moved into subpackages), mid rung 2
SAVED_BEFORE_THE_MOVE = (
    '{"attempt": 0, "candidate": null, "checkpoint": "runs:/r2/checkpoints/step-00015", "cursor": {}, "error": null, '
    '"inputs": {"judge_kind": "model", "judge_label": "tiny/v1", "judge_location": "models:/tiny/1", "student": '
    '"models:/tiny/1", "student_label": "v1"}, "job": "ab12cd34", "judge": "tiny/v1", "ladder": "tiny", '
    '"parent_run": "p1", "phase": "train", "results": {"current_judge": {"accuracy": 0.7, "auc": 0.8, '
    '"identical_share": 0.1}, "ended": null, "final_accuracy": null, "history": [], "judge_auc": null, '
    '"judge_is_verifier": false, "stage_restarts": 0, "start_accuracy": 0.5, "student_init": "v1"}, "rung": 2, '
    '"rung_run": "r2", "state": "running", "step": 15, "submission": null, "updated_at": 0.0}')


def test_progress_saved_before_the_layout_moved_resumes_after_it():
    """The saved progress names no module: a ladder started before the move reads back whole (its pinned judge
    and student, its checkpoint), with the fields added since (the yardstick) empty."""
    from ladder.progress import Phase, Progress, ResolvedJudge, State

    p = Progress.from_json(SAVED_BEFORE_THE_MOVE)
    assert (p.state, p.phase, p.rung, p.step) == (State.RUNNING, Phase.TRAIN, 2, 15)
    assert p.checkpoint == "runs:/r2/checkpoints/step-00015" and p.results.current_judge.auc == 0.8
    judge = ResolvedJudge(p.inputs.judge_kind, p.inputs.judge_location, p.inputs.judge_label)
    assert judge == ResolvedJudge("model", "models:/tiny/1", "tiny/v1") and p.inputs.student_label == "v1"
    assert p.results.yardstick is None and p.results.yardstick_start is None
    assert Progress.from_json(p.to_json()) == p
