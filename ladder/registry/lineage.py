"""A ladder's lineage read back from MLflow: one row per version, the chart, and descriptions for people.

Which model judged a rung comes from the rung run's model input (an MLflow link) when there is one; ladders
recorded before those links existed, and verifier or path judges, fall back to the `ladder.judge` tag.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from stages.models import model_id_of
from ladder.registry.tags import Tag

HEALTH = {"reward_mean": "reward.mean", "response_tokens": "rollout.response_tokens",
          "length_reward_corr": "judge.length_reward_corr", "approval": "judge.approval",
          "identical_share": "judge.identical_share", "parse_failure_rate": "judge.parse_failure_rate",
          "judge_tokens_per_sample": "judge.tokens_per_sample",
          # where the task has answers: the judge's rewards against the truth, right samples, held-out flips
          "reward_accuracy": "judge.reward_accuracy", "sample_accuracy": "rollout.accuracy",
          "flip_rate": "eval.flip_rate", "answer_consistency": "rollout.answer_consistency"}


def lineage_rows(reg) -> list[dict]:
    """One row per version: rung, task, judge, gate verdict, accuracies, judge health over the rung."""
    versions = reg.versions()
    by_model = {model_id_of(v): f"{v.name}/v{v.version}" for v in versions if model_id_of(v)}
    rows = []
    for v in versions:
        t = v.tags
        run = reg.client.get_run(v.run_id) if v.run_id else None
        judge_model = judge_model_id(run)
        number = lambda key: float(t[key]) if key in t else None  # noqa: E731
        rows.append({"version": int(v.version), "rung": int(t.get(Tag.RUNG, 0)), "task": t.get(Tag.TASK),
                     "judged_by": by_model.get(judge_model) or t.get(Tag.JUDGE),
                     "judge_link": "model input" if judge_model else "tag",
                     "judge_mode": t.get(Tag.JUDGE_MODE), "status": t.get(Tag.STATUS),
                     "heldout_accuracy": run.data.metrics.get("eval.accuracy") if run else None,
                     "judge_accuracy": number(Tag.JUDGE_ACCURACY), "judge_auc": number(Tag.JUDGE_AUC),
                     "gate": t.get(Tag.GATE), "gate_rule": t.get(Tag.GATE_RULE),
                     "reason": t.get(Tag.GATE_REASON), "decided_by": t.get(Tag.DECIDED_BY),
                     "student_init": t.get(Tag.STUDENT_INIT), "job": t.get(Tag.JOB),
                     "model_id": model_id_of(v), "start_accuracy": start_accuracy(reg, v.run_id),
                     # the rung's judge solving the rung's task itself (greedy; solve mode: its majority answer)
                     "judge_task_accuracy": at_start(reg, v.run_id, "judge.task_accuracy"),
                     "judge_majority_accuracy": at_start(reg, v.run_id, "judge.task_majority_accuracy"),
                     **climb(reg, v, run), **rung_means(reg, v.run_id)})
    return rows


def climb(reg, version, run) -> dict:
    """Where a version stands: on the ladder's one yardstick (at its rung's start and end), by how much its student
    beats its judge on the rung's own task (held-out greedy accuracy, both), and why its rung ended."""
    t = version.tags
    final = run.data.metrics.get("eval.accuracy") if run else None
    judge = at_start(reg, version.run_id, "judge.task_accuracy")
    yardstick = float(t[Tag.YARDSTICK]) if Tag.YARDSTICK in t else (
        run.data.metrics.get("eval.yardstick_accuracy") if run else None)
    return {"yardstick": yardstick, "yardstick_start": at_start(reg, version.run_id, "eval.yardstick_accuracy"),
            "beats_judge": None if final is None or judge is None else final - judge,
            "ended_by": (run.data.tags.get(Tag.ENDED_BY) if run else None) or "steps"}


def judge_model_id(run) -> Optional[str]:
    """The logged model a rung run names as its input (its judge), if any."""
    inputs = getattr(run, "inputs", None) if run else None
    models = getattr(inputs, "model_inputs", None) or []
    return models[0].model_id if models else None


def start_accuracy(reg, run_id) -> Optional[float]:
    """Held-out accuracy of the rung's student before its first step."""
    return at_start(reg, run_id, "eval.accuracy")


def at_start(reg, run_id, key: str) -> Optional[float]:
    """The rung run's metric `key` at step 0 (measured before the first step)."""
    hist = reg.client.get_metric_history(run_id, key) if run_id else []
    return next((m.value for m in hist if m.step == 0), None)


def rung_means(reg, run_id) -> dict:
    """Per-step judge-health metrics averaged over the rung's training steps (step 0 is evaluation)."""
    out = {}
    for name, key in HEALTH.items():
        hist = [m.value for m in reg.client.get_metric_history(run_id, key) if m.step > 0] if run_id else []
        out[name] = sum(hist) / len(hist) if hist else None
    return out


def describe(reg, version) -> str:
    """What a person wants on the version's page: rung, judged by, held-out accuracy, the gate's numbers and
    reason, and who decided and when."""
    t = version.tags
    run = reg.client.get_run(version.run_id) if version.run_id else None
    judge = judge_model_id(run)
    judged = t.get(Tag.JUDGE, "-")
    kind = "verifier" if judged.startswith("verifier:") else ("registered model" if judge else "model directory")
    start, final = start_accuracy(reg, version.run_id), run.data.metrics.get("eval.accuracy") if run else None
    lines = [f"Rung {t.get(Tag.RUNG, '?')} of ladder {version.name} (job {t.get(Tag.JOB, '-')}): "
             f"a student trained with GRPO against the frozen judge {judged} ({kind}, {t.get(Tag.JUDGE_MODE, '-')} "
             f"mode), initialised from {t.get(Tag.STUDENT_INIT, 'base')}.",
             f"Task: {t.get(Tag.TASK, '-')}. Held-out accuracy: {_num(start)} before, {_num(final)} after."
             + _judge_skill(reg, version.run_id)]
    if Tag.GATE in t:
        lines.append(f"As a judge: accuracy {t.get(Tag.JUDGE_ACCURACY)}, AUC {t.get(Tag.JUDGE_AUC)} on the "
                     f"calibration set. Gate: {t[Tag.GATE]} ({t.get(Tag.GATE_RULE)}): "
                     f"{t.get(Tag.GATE_REASON)}.")
    status = t.get(Tag.STATUS, "candidate")
    if status in ("promoted", "rejected"):
        lines.append(f"Decision: {status} by {t.get(Tag.DECIDED_BY)} at {t.get(Tag.DECIDED_AT)}"
                     f" ({t.get(Tag.REASON, '-')}).")
        if t.get(Tag.ALIASES_MOVED):
            lines.append(f"Aliases: {t[Tag.ALIASES_MOVED]}.")
    else:
        lines.append("Decision: pending.")
    return "\n\n".join(lines)


def _judge_skill(reg, run_id) -> str:
    greedy, majority = at_start(reg, run_id, "judge.task_accuracy"), at_start(reg, run_id, "judge.task_majority_accuracy")
    if greedy is None:
        return ""
    return (f" Its judge solves the task itself: {greedy:.3f} greedy"
            + ("" if majority is None else f", {majority:.3f} by its majority answer") + ".")


def _num(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.3f}"


def log_chart(reg, run_id: str, out_dir: str) -> Optional[str]:
    """Draw the ladder chart from the lineage and attach it to the ladder's parent run (the UI shows it)."""
    from ladder.registry.chart import ladder_chart

    rows = lineage_rows(reg)
    if not rows:
        return None
    path = Path(out_dir) / "ladder_chart.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    ladder_chart(rows, path, title=f"ladder {reg.name}")
    reg.client.log_artifact(run_id, str(path))
    return str(path)
