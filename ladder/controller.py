"""The ladder controller: a named, detached Ray actor; a transition function over the ladder's saved progress.

`run()` loads the progress (or starts it), runs the handler of its phase, saves it, and repeats until the
ladder is stopped, done or failed; MLflow holds the progress, lineage and decisions, so a restart reads them back.
"""
from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Optional

from ladder.actor_lifetime import end_later, restarted_by_ray
from ladder.progress import Phase, Progress, RungResults, State, after_decision
from ladder.runtime import first_line
from ladder.stageset import StageSet
from stages.actors import as_start_error, kill_all, raise_if_start_failed, spawn
from stages.models import MODELS_SCHEME, is_model_uri, model_uri


class LadderController:
    """Runs rungs 1..spec.rungs: train against the current judge, register, gate, promote."""

    def __init__(self, spec, job: Optional[str] = None, resume: bool = False, submission: Optional[str] = None):
        self.spec = spec
        self.job = job or uuid.uuid4().hex[:8]
        self.resume = resume
        self.submission = submission
        self.progress = Progress(spec.name, self.job)
        self.latest: dict[str, float] = {}
        self.live_step = 0
        self.history: list[dict] = []
        self._stop = threading.Event()
        self._now = threading.Event()
        self._lock = threading.Lock()
        self._running = threading.Lock()
        self._ran = False
        self._actors: list = []
        self._stages = StageSet()  # stage actors kept from rung to rung (models loaded in place)
        if restarted_by_ray():  # whoever called `run` may be gone with the old process: go on by ourselves
            threading.Thread(target=self.run, daemon=True).start()

    # control ------------------------------------------------------------------------------
    def status(self) -> dict:
        with self._lock:
            p = self.progress
            return {**p.summary(), "step": max(self.live_step, p.step), "steps_per_rung": self.spec.train.steps,
                    "rungs": self.spec.rungs, "latest": dict(self.latest), "history": list(self.history),
                    "source": "controller"}

    def stop(self, now: bool = False) -> str:
        """Graceful: finish the step, checkpoint, stop. `now`: abort the step (its stage actors are killed)."""
        self._stop.set()
        if now:
            self._now.set()
            kill_all(self._actors)
        with self._lock:
            if self.progress.active:
                self.progress = self.progress.to(state=State.STOPPING)
            return self.progress.state.value

    def _save(self, progress: Progress) -> Progress:
        with self._lock:
            if self._stop.is_set() and progress.state is State.RUNNING:
                progress = progress.to(state=State.STOPPING)
            self.progress = progress
        self.registry.save_progress(progress)
        return progress

    def _watch_requests(self, poll_s: float = 2.0) -> None:
        """Stop requests written to MLflow by `ladder stop` (which may have no Ray connection)."""
        while not self._done.wait(poll_s):
            try:
                request = self.registry.stop_request(self.progress.parent_run)
            except Exception:  # MLflow briefly unreachable: ask again at the next poll
                continue
            if request and not self._stop.is_set():
                self.stop(now=request == "now")

    # the transition function --------------------------------------------------------------
    def prepare(self) -> None:
        """Open the registry; tasks and calibration sets are built per rung (the schedule may change them)."""
        from ladder.calibration import TaskSets
        from ladder.registry import Registry
        from ladder.rung_store import RungStore

        self.registry = Registry.for_spec(self.spec, retry_s=self.spec.mlflow.retry_s)
        self.registry.buffer_writes()  # the step loop goes on through an MLflow outage
        self.store = RungStore(self.registry, Path(self.spec.workdir) / self.spec.name / self.job,
                               self.spec.checkpoint_every)
        self.tasks = TaskSets(self.spec, self.store.root)
        self.tasks.task(1)  # a dataset problem fails here, before any actor starts

    HANDLERS = {Phase.TRAIN: "_train", Phase.REGISTER: "_register", Phase.GATE: "_gate", Phase.AWAIT: "_await"}

    def run(self) -> dict:
        """Run the ladder to its end (or a stop); a second call waits for the first and returns its status."""
        with self._running:
            if not self._ran:
                self._ran = True
                self._run()
        return self.status()

    def _run(self) -> None:
        self._done = threading.Event()
        p = self.progress
        try:
            self.prepare()
            p = self._begin()
            threading.Thread(target=self._watch_requests, daemon=True).start()
            while p.active and p.phase is not Phase.DONE:
                if self._stop.is_set():
                    p = self._save(p.to(state=State.STOPPED))
                    break
                p = self._save(getattr(self, self.HANDLERS[p.phase])(p))
            self._finish(p)
        except Exception as exc:  # the controller records why it failed and stays queryable
            exc = as_start_error(exc)  # an actor that could not start: its own error, not Ray's first line
            p = self.progress.to(state=State.FAILED, error=f"{type(exc).__name__}: {first_line(exc, None)}")
            self._fail_rung_run(p)
            self._finish(p)
        finally:
            self._done.set()
            kill_all(self._actors)
            end_later()

    def _begin(self) -> Progress:
        """A new job's progress, or the saved one of this job: on `resume`, and when Ray restarts a controller
        that died (it is constructed again with the same job, and re-enters the saved phase)."""
        saved = self.registry.load_progress(self.job)
        if saved is None:
            parent = self.registry.start_ladder_run(self.spec, self.job)
            self.registry.save_spec(parent, self.spec)
            return self._save(Progress(self.spec.name, self.job, parent_run=parent, submission=self.submission)
                              .to(state=State.RUNNING))
        if not saved.active and not self.resume:  # a restart after the ladder had ended: nothing to do
            return saved
        self.registry.reopen_run(saved.parent_run)
        if self.resume:  # a restarted controller keeps a stop someone asked for
            self.registry.clear_stop_request(saved.parent_run)
        if saved.phase is Phase.DONE and saved.results.ended == "rejected":
            saved = saved.to(phase=Phase.AWAIT)  # a decision by hand since the rejection is read again
        self.history = list(saved.results.history)
        return self._save(saved.to(state=State.RUNNING, error=None, submission=self.submission))

    def _fail_rung_run(self, p: Progress) -> None:
        """The failed rung's own run says why, too (the MLflow UI shows it beside the rung's metrics)."""
        try:
            if p.rung_run:
                self.registry.record_ended_by(p.rung_run, f"failed: {p.error}")
                self.registry.end_run(p.rung_run, "FAILED")
        except Exception:  # MLflow itself may be what failed
            pass

    def _finish(self, p: Progress) -> None:
        with self._lock:
            self.progress = p.to(phase=Phase.DONE) if p.state is State.COMPLETED else p
        try:
            self.registry.flush_writes()
            self.registry.save_progress(self.progress)
            if self.registry.versions():
                self.registry.log_ladder_chart(p.parent_run, str(Path(self.spec.workdir) / self.spec.name))
            self.registry.end_run(p.parent_run, {State.COMPLETED: "FINISHED", State.FAILED: "FAILED"}.get(
                p.state, "KILLED"))
        except Exception:  # the parent run may not exist if the start itself failed
            pass

    # phase handlers -------------------------------------------------------------------------
    def _train(self, p: Progress) -> Progress:
        """Train the rung from its last checkpoint (or its start) to the end, checkpointing on the way."""
        import ray

        from ladder.judges import pin_rung_inputs, pinned_judge
        from ladder.rung import Rung, train_steps

        rspec = self.spec.for_rung(p.rung)
        if p.inputs is None:  # the rung's first start (or a progress saved before pins): pinned now, for good
            p = self._save(p.to(inputs=pin_rung_inputs(self.spec, p.rung, self.registry)))
        judge, student = pinned_judge(p.inputs), p.inputs.student
        if p.rung_run is None:
            run_id = self.registry.start_rung_run(p.parent_run, p.rung, p.job, p.rung_uid)
            self.registry.record_judge_input(run_id, judge)
            p = self._save(p.to(rung_run=run_id, judge=judge.label, results=RungResults(
                student_init=p.inputs.student_label, judge_is_verifier=judge.kind == "verifier")))
        seed = self.spec.seed + 1000 * p.rung + p.attempt
        with self._lock:
            self.live_step, self.latest = p.step, {}
        t0 = time.perf_counter()
        rung = Rung(rspec, self.tasks.task(p.rung), student, judge, seed, name_prefix=self._prefix,
                    stages=self._stages)
        self._actors = rung.actors()
        handed_over = False
        try:
            p, calibration = self._enter_rung(rung, p, t0)

            def on_step(step: int, metrics: dict) -> None:
                nonlocal p
                self._record_step(rung, p, step, metrics)
                if self.store.due(step, rspec.train.steps):
                    p = self._save(self.store.checkpoint(rung, p, step))

            ended = train_steps(rung, p.step + 1, rspec.train.steps, self._stop.is_set, on_step)
            if ended == "stopped":
                done = rung.step_no
                return (self.store.checkpoint(rung, p, done) if done > p.step else p).to(state=State.STOPPED)
            p = self._leave_rung(rung, p, ended, calibration)
            self._stages, handed_over = rung.handover(), True  # the gate and the next rung take them over
            return p
        except Exception as exc:
            if self._now.is_set():  # `stop --now` killed the stage actors: whatever broke, back to the checkpoint
                return p.to(state=State.STOPPED)
            if isinstance(exc, (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)):
                return self._after_stage_death(p, exc)  # an actor died (or the trainer that owned the weights)
            raise
        finally:
            if not handed_over:
                rung.shutdown()
            self._actors = self._stages.actors()

    def _enter_rung(self, rung, p: Progress, t0: float):
        """Engines up (started or taken over), the calibration set, and the rung restored from its checkpoint or
        measured at its start; returns the progress and the calibration items."""
        rung.ready()
        self.registry.log_metrics(p.rung_run, {  # the rung-to-rung switch: engines started or taken over
            "time/rung_start_s": time.perf_counter() - t0, "rung/actors_reused": float(rung.stages.reused),
            "rung/actors_started": float(rung.stages.started)}, p.step)
        calibration = self.tasks.calibration(p.rung, rung)  # sampled by the student where the task needs it
        return (self._restore(rung, p) if p.checkpoint else self._start_rung(rung, p, calibration)), calibration

    def _record_step(self, rung, p: Progress, step: int, metrics: dict) -> None:
        if self.registry.outbox.retries:  # writes retried through MLflow outages so far
            metrics = {**metrics, "faults/mlflow_retries": self.registry.outbox.retries}
        self.registry.log_metrics(p.rung_run, metrics, step)
        self.registry.log_judge_examples(p.rung_run, step, rung.last_examples)
        self.registry.log_judge_examples(p.rung_run, step, rung.last_samples, "student_samples")
        with self._lock:
            self.live_step, self.latest = step, metrics

    def _leave_rung(self, rung, p: Progress, ended: str, calibration) -> Progress:
        """The trained rung's final evaluation, its judge measured for the gate, its student logged as the
        candidate; on to registration."""
        from ladder.gate import measure

        if ended in ("saturation", "collapse"):  # the collapse guard put the rung's best weights back
            self.registry.record_ended_by(p.rung_run, rung.ended_why or ended)
        final = rung.evaluate()
        self.registry.log_metrics(p.rung_run, final, rung.step_no)
        current = measure(rung.pool, calibration)
        self.tasks.calibration(min(p.rung + 1, self.spec.rungs), rung)  # the gate's, for the next rung's task
        p = self.store.log_candidate(rung, p, self._version_tags(p))
        return p.to(phase=Phase.REGISTER, results=p.results.to(final_accuracy=final.get("eval/accuracy"),
                                                                current_judge=current))

    def _after_stage_death(self, p: Progress, exc: Exception) -> Progress:
        """The trainer died (rollout and judge workers are replaced in place, within the step): the rung starts
        again from its last checkpoint on fresh actors (the train phase re-enters), within `stage_restarts`;
        beyond, it fails."""
        from ladder.rung import RungFailed

        raise_if_start_failed(exc)  # an actor whose constructor raised: the rung fails now, with that error
        restarts = p.results.stage_restarts + 1
        if restarts > self.spec.stage_restarts:
            raise RungFailed(f"stage actors died {restarts} times in rung {p.rung} (stage_restarts is "
                             f"{self.spec.stage_restarts}); last: {first_line(exc, 200)}")
        self.registry.log_metrics(p.rung_run, {"faults/stage_restarts": restarts}, p.step)
        return p.to(results=p.results.to(stage_restarts=restarts))

    def _start_rung(self, rung, p: Progress, calibration) -> Progress:
        from ladder.judge_skill import judge_task_accuracy

        self._probe_judge(rung, calibration, p.rung_run)
        start = rung.evaluate()
        rows = rung.task.eval
        start.update(judge_task_accuracy(rung.pool, rung.task, [r.prompt for r in rows], [r.answer for r in rows],
                                         rung.spec.rollout.max_tokens))
        self.registry.log_metrics(p.rung_run, start, 0)
        return self._save(p.to(results=p.results.to(start_accuracy=start.get("eval/accuracy"))))

    def _restore(self, rung, p: Progress) -> Progress:
        restored = rung.restore(self.store.local_checkpoint(p))
        assert restored == p.step, f"checkpoint holds step {restored}, progress says {p.step}"
        with self._lock:
            self.live_step = p.step
        return p

    def _version_tags(self, p: Progress) -> dict[str, str]:
        rspec = self.spec.for_rung(p.rung)
        mode = "verifier" if p.results.judge_is_verifier else rspec.judge.mode
        return self.registry.rung_tags(p, self.spec.sha256(), rspec.task_label(), mode)

    def _register(self, p: Progress) -> Progress:
        """Register the rung's logged candidate as a model version (idempotent on the rung uid). A candidate
        saved by an older controller as a checkpoint folder is logged as a model first."""
        if is_model_uri(p.checkpoint):  # the logged model models:/<model_id>
            version = self.registry.register(p.rung_run, None, self._version_tags(p),
                                             model_id=p.checkpoint.removeprefix(MODELS_SCHEME))
        else:
            version = self.registry.register(p.rung_run, str(Path(self.store.local_checkpoint(p)) / "model"),
                                             self._version_tags(p), step=p.step)
        return p.to(phase=Phase.GATE, candidate=version)

    def _gate(self, p: Progress) -> Progress:
        """Measure the candidate as a judge; auto: promote or reject; manual: wait for a person. A decision or
        verdict already in the registry (a crash after it, before the progress was saved) is used, not re-made."""
        decided, verdict = self.registry.decision(p.candidate), self.registry.recorded_gate(p.candidate)
        if decided is None and verdict is None:
            verdict = self._measure_candidate(p)
        if verdict is not None:
            p = p.to(results=p.results.to(judge_auc=verdict.auc))
        if decided is not None:
            return self._decided(p, decided)
        if self.spec.promotion.policy == "manual":
            return p.to(phase=Phase.AWAIT, state=State.AWAITING_PROMOTION)
        decide = self.registry.promote if verdict.passed else self.registry.reject
        decide(p.candidate, by="auto", reason=verdict.reason)
        return self._decided(p, "promoted" if verdict.passed else "rejected")

    def _measure_candidate(self, p: Progress):
        """The gate's measurement of the candidate, its verdict recorded on the version (and returned)."""
        from ladder.decisions import Verdict

        r = p.results
        gate = self.gate(model_uri(self.spec.name, p.candidate), p.rung, r.current_judge, r.judge_is_verifier,
                         r.final_accuracy, self._baseline_accuracy(r.start_accuracy))
        self.registry.log_metrics(p.rung_run, gate.metrics(), p.step)
        with self._lock:
            self.latest = {**self.latest, **gate.metrics()}
        self.registry.record_gate(p.candidate, gate)
        return Verdict(gate.passed, gate.reason, gate.candidate.auc)

    def _await(self, p: Progress, poll_s: float = 1.0) -> Progress:
        """Wait until a person promotes or rejects the candidate (written to MLflow), or a stop."""
        p = self._save(p.to(state=State.AWAITING_PROMOTION))
        self._stages.release()  # a person may take hours: no engines held meanwhile
        self._actors = []
        while not self._stop.is_set():
            decided = self.registry.decision(p.candidate)
            if decided is not None:
                return self._decided(p.to(state=State.RUNNING), decided)
            time.sleep(poll_s)
        return p.to(state=State.STOPPED)

    def _decided(self, p: Progress, decision: str) -> Progress:
        """After a decision: the next rung, a retry of this one, or the end of the ladder."""
        row = {"rung": p.rung, "version": p.candidate, "judge": p.judge, "status": decision,
               "accuracy": p.results.final_accuracy, "judge_auc": p.results.judge_auc}
        with self._lock:
            self.history = [h for h in self.history if h["version"] != p.candidate] + [row]
        self.registry.end_run(p.rung_run)
        return after_decision(p, decision, self.spec.rungs, self.spec.promotion, self.history)

    # judges and students -------------------------------------------------------------------
    def _baseline_accuracy(self, start_accuracy: Optional[float]) -> Optional[float]:
        """The last promoted rung's held-out accuracy; before any promotion, the student's at step 0."""
        champion = self.registry.alias("champion")
        if champion is not None:
            recorded = self.registry.heldout_accuracy(champion)
            if recorded is not None:
                return recorded
        return start_accuracy

    def _probe_judge(self, rung, calibration, run_id: str) -> None:
        """Record the judge pool's scores of fixed calibration items: proof of which weights it serves."""
        from ladder.gate import score_calibration

        if rung.pool.verifier is None:
            self.registry.record_judge_probe(run_id, score_calibration(rung.pool, calibration[:8]))

    def gate(self, candidate: str, k: int, current, current_is_verifier: bool,
             student_accuracy: Optional[float] = None, baseline: Optional[float] = None):
        """The candidate measured as a judge on judge workers, in the mode rung k+1 will use."""
        from ladder.gate import candidate_quality, decide_gate

        try:
            quality = candidate_quality(self.spec, self.tasks, self._stages, candidate, k, self._prefix)
        finally:
            self._actors = self._stages.actors()
        return decide_gate(quality, current, self.spec.promotion, current_is_verifier, student_accuracy, baseline)

    @property
    def _prefix(self) -> str:
        """What this ladder's stage actors are named after: `<ladder>.<job>`."""
        return f"{self.spec.name}.{self.job}"


def start_controller(spec, job: Optional[str] = None, resume: bool = False, submission: Optional[str] = None):
    """The named, detached controller actor of this ladder (namespace `ladder`): it outlives the driver that
    started it (a killed `ladder run` or `ray job stop` does not orphan the ladder's stage actors: they are
    the controller's, and the controller ends itself once the ladder is stopped or done). If its process dies,
    Ray starts it again (`controller_restarts`) and the driver's `run` call is retried on it."""
    job = job or uuid.uuid4().hex[:8]  # chosen here: a restarted controller is built from these same arguments
    return spawn(LadderController, spec, job, resume, submission, resources=spec.resources.controller, name=spec.name,
                 namespace="ladder", detached=True, max_concurrency=4, max_restarts=spec.controller_restarts,
                 max_task_retries=-1 if spec.controller_restarts else 0)
