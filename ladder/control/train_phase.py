"""The train phase of a rung: its judge and student pinned, its stage actors up, its steps trained from the last
checkpoint (or its start) with checkpoints on the way, and its student logged as the candidate to register.

Each function takes the controller whose phase it runs, as a `PhaseContext` (phase.py), and returns the next progress."""
from __future__ import annotations

import time

from ladder.control.phase import PhaseContext
from ladder.progress import Phase, Progress, RungResults, State
from ladder.errors import first_line
from ladder.registry.registry import version_tags
from stages.actors import StepTimeout, raise_if_start_failed

YARDSTICK_METRIC = "eval/yardstick_accuracy"  # logged at a rung's step 0 and at its end


def train(ctl: PhaseContext, p: Progress) -> Progress:
    """Train the rung from its last checkpoint (or its start) to the end, checkpointing on the way."""
    import ray

    from ladder.rung.driver import Rung, train_steps

    p, judge = open_rung(ctl, p)
    rspec = ctl.spec.for_rung(p.rung)
    ctl.live.at_step(p.step)
    t0 = time.perf_counter()
    rung = Rung(rspec, ctl.tasks.task(p.rung), p.inputs.student, judge, ctl.spec.seed + 1000 * p.rung + p.attempt,
                name_prefix=ctl.name_prefix, stages=ctl.stages)
    ctl.hold(rung.actors())
    handed_over = False
    try:
        p, _ = enter_rung(ctl, rung, p, t0)

        def on_step(step: int, metrics: dict) -> None:
            nonlocal p
            record_step(ctl, rung, p, step, metrics)
            if ctl.store.due(step, rspec.train.steps):
                p = ctl.save(ctl.store.checkpoint(rung, p, step))

        ended = train_steps(rung, p.step + 1, rspec.train.steps, ctl.stopping, on_step)
        if ended == "stopped":
            return ctl.store.at_stop(rung, p).to(state=State.STOPPED)
        p = leave_rung(ctl, rung, p, ended)
        ctl.keep(rung.handover())  # the gate and the next rung take them over
        handed_over = True
        return p
    except Exception as exc:
        if ctl.aborted():  # `stop --now` killed the stage actors: whatever broke, back to the checkpoint
            return p.to(state=State.STOPPED)
        if isinstance(exc, (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, StepTimeout)):
            ctl.keep(rung.survivors())  # the engines that still answer are taken over by the restart
            handed_over = True
            return after_stage_death(ctl, p, exc)  # an actor died or hung (or the trainer that owned the weights)
        raise
    finally:
        if not handed_over:
            rung.shutdown()
        ctl.hold(ctl.stages.actors())


def open_rung(ctl: PhaseContext, p: Progress):
    """The rung's judge and student init pinned (at its first start, for good) and its MLflow run opened; returns
    the progress and the judge."""
    from ladder.judging.resolve import pin_rung_inputs, pinned_judge

    if p.inputs is None:  # the rung's first start (or a progress saved before pins): pinned now, for good
        p = ctl.save(p.to(inputs=pin_rung_inputs(ctl.spec, p.rung, ctl.registry)))
    judge = pinned_judge(p.inputs, ctl.spec)  # a pinned verifier checked before it is imported
    if p.rung_run is None:
        run_id = ctl.registry.start_rung_run(p.parent_run, p.rung, p.job, p.rung_uid)
        ctl.registry.record_judge_input(run_id, judge)
        p = ctl.save(p.to(rung_run=run_id, judge=judge.label, results=RungResults(
            student_init=p.inputs.student_label, judge_is_verifier=judge.kind == "verifier")))
    return p, judge


def enter_rung(ctl: PhaseContext, rung, p: Progress, t0: float):
    """Engines up (started or taken over), the calibration set, and the rung restored from its checkpoint or
    measured at its start; returns the progress and the calibration items."""
    rung.ready()
    if rung.lora_sync:
        ctl.registry.record_lora_sync(p.rung_run, rung.lora_sync, rung.lora_why)
    ctl.registry.log_metrics(p.rung_run, {  # the rung-to-rung switch: engines started or taken over
        "time/rung_start_s": time.perf_counter() - t0, "rung/actors_reused": float(rung.stages.reused),
        "rung/actors_started": float(rung.stages.started)}, p.step)
    calibration = ctl.tasks.calibration(p.rung, rung)  # sampled by the student where the task needs it
    return (restore(ctl, rung, p) if p.checkpoint else start_rung(ctl, rung, p, calibration)), calibration


def record_step(ctl: PhaseContext, rung, p: Progress, step: int, metrics: dict) -> None:
    registry = ctl.registry
    if registry.outbox.retries:  # writes retried through MLflow outages so far
        metrics = {**metrics, "faults/mlflow_retries": registry.outbox.retries}
    if registry.claim_step(p.rung_run, step):  # a step redone after a restart keeps what its first run logged
        registry.log_metrics(p.rung_run, metrics, step)
        registry.log_judge_examples(p.rung_run, step, rung.last_examples)
        registry.log_judge_examples(p.rung_run, step, rung.last_samples, "student_samples")
    ctl.live.at_step(step, metrics)


def leave_rung(ctl: PhaseContext, rung, p: Progress, ended: str) -> Progress:
    """The trained rung's final evaluation, its judge measured for the gate, its student logged as the
    candidate; on to registration."""
    from ladder.judging.gate import measure

    if ended in ("saturation", "collapse"):  # the collapse guard put the rung's best weights back
        ctl.registry.record_ended_by(p.rung_run, rung.ended_why or ended)
    final = rung.evaluate()
    yardstick = measure_yardstick(ctl, rung)
    ctl.registry.log_metrics(p.rung_run, {**final, **yardstick}, rung.step_no)
    # the rung's judge measured on the items the gate measures the candidate on: the next rung's task
    current = measure(rung.pool, ctl.tasks.calibration(min(p.rung + 1, ctl.spec.rungs), rung))
    p = ctl.store.log_candidate(rung, p, version_tags(ctl.spec, p))
    return p.to(phase=Phase.REGISTER, results=p.results.to(final_accuracy=final.get("eval/accuracy"),
                                                            yardstick=yardstick.get(YARDSTICK_METRIC),
                                                            current_judge=current))


def after_stage_death(ctl: PhaseContext, p: Progress, exc: Exception) -> Progress:
    """The trainer died (rollout and judge workers are replaced in place, within the step): the rung starts
    again from its last checkpoint on a fresh trainer and the engines that still answer (the train phase
    re-enters), within `stage_restarts`; beyond, it fails."""
    from ladder.rung.driver import RungFailed

    raise_if_start_failed(exc)  # an actor whose constructor raised: the rung fails now, with that error
    restarts = p.results.stage_restarts + 1
    if restarts > ctl.spec.stage_restarts:
        raise RungFailed(f"stage actors died {restarts} times in rung {p.rung} (stage_restarts is "
                         f"{ctl.spec.stage_restarts}); last: {first_line(exc, 200)}")
    ctl.registry.log_metrics(p.rung_run, {"faults/stage_restarts": restarts}, p.step)
    return p.to(results=p.results.to(stage_restarts=restarts))


def start_rung(ctl: PhaseContext, rung, p: Progress, calibration) -> Progress:
    """The rung at step 0: its judge probed, the student's held-out accuracy and the judge's own at the task."""
    from ladder.judging.skill import judge_task_accuracy

    probe_judge(ctl.registry, rung, calibration, p.rung_run)
    start = rung.evaluate()
    rows = rung.task.eval
    start.update(judge_task_accuracy(rung.pool, rung.task, [r.prompt for r in rows], [r.answer for r in rows],
                                     rung.spec.rollout.max_tokens))
    start.update(measure_yardstick(ctl, rung))
    ctl.registry.log_metrics(p.rung_run, start, 0)
    return ctl.save(p.to(results=p.results.to(start_accuracy=start.get("eval/accuracy"),
                                              yardstick_start=start.get(YARDSTICK_METRIC))))


def measure_yardstick(ctl: PhaseContext, rung) -> dict[str, float]:
    """The student's greedy accuracy on the ladder's one yardstick (`eval.yardstick`); {} when there is none."""
    task = ctl.tasks.yardstick()
    return {} if task is None else {YARDSTICK_METRIC: rung.accuracy_on(task)}


def restore(ctl: PhaseContext, rung, p: Progress) -> Progress:
    restored = rung.restore(ctl.store.local_checkpoint(p))
    assert restored == p.step, f"checkpoint holds step {restored}, progress says {p.step}"
    ctl.live.at_step(p.step)
    return p


def probe_judge(registry, rung, calibration, run_id: str) -> None:
    """Record the judge pool's scores of fixed calibration items: proof of which weights it serves."""
    from ladder.judging.gate import score_calibration

    if rung.pool.verifier is None:
        registry.record_judge_probe(run_id, score_calibration(rung.pool, calibration[:8]))
