"""The ladder controller: a named, detached Ray actor running the rung state machine.

It is the only writer of ladder state; MLflow holds lineage and decisions, so a restart can read them back.
"""
from __future__ import annotations

import enum
import threading
import time
import uuid
from pathlib import Path
from typing import Optional


class State(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    AWAITING_PROMOTION = "awaiting_promotion"
    STOPPING = "stopping"
    STOPPED = "stopped"
    COMPLETED = "completed"
    FAILED = "failed"


def saturated(approvals: list[float], sat) -> bool:
    """The judge approves nearly everything: mean approval over the last `window` steps > threshold."""
    if not sat.enabled or len(approvals) < sat.window:
        return False
    return sum(approvals[-sat.window:]) / sat.window > sat.threshold


class LadderController:
    """Runs rungs 1..spec.rungs: train against the current judge, register, gate, promote."""

    def __init__(self, spec, job: Optional[str] = None):
        self.spec = spec
        self.job = job or uuid.uuid4().hex[:8]
        self.state = State.PENDING
        self.rung = 0
        self.step = 0
        self.latest: dict[str, float] = {}
        self.history: list[dict] = []
        self.error: Optional[str] = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    # control ------------------------------------------------------------------------------
    def status(self) -> dict:
        with self._lock:
            return {"ladder": self.spec.name, "job": self.job, "state": self.state.value, "rung": self.rung,
                    "step": self.step, "steps_per_rung": self.spec.train.steps, "rungs": self.spec.rungs,
                    "latest": dict(self.latest), "history": list(self.history), "error": self.error}

    def stop(self) -> str:
        self._stop.set()
        with self._lock:
            if self.state in (State.RUNNING, State.AWAITING_PROMOTION, State.PENDING):
                self.state = State.STOPPING
            return self.state.value

    def _set(self, **fields) -> None:
        with self._lock:
            for k, v in fields.items():
                setattr(self, k, v)

    # the state machine --------------------------------------------------------------------
    def prepare(self) -> None:
        """Open the registry; tasks and calibration sets are built per rung (the schedule may change them)."""
        from ladder.registry import Registry

        self.registry = Registry.for_spec(self.spec)
        self._tasks: dict[str, object] = {}
        self.task_for(1)  # a dataset problem fails here, before any actor starts

    def task_for(self, k: int):
        """Rung k's task and judge calibration set (built once per distinct task)."""
        from ladder.tasks import build_task

        rspec = self.spec.for_rung(k)
        key = rspec.task.model_dump_json()
        if key not in self._tasks:
            task = build_task(rspec.task, self.spec.seed)
            self._tasks[key] = (task, task.calibration(self.spec.eval.calibration_size, self.spec.seed + 7))
        return self._tasks[key]

    def run(self) -> dict:
        try:
            self._set(state=State.RUNNING)
            self.prepare()
            self.parent_run = self.registry.start_ladder_run(self.spec, self.job)
            k, retries = 1, 0
            while k <= self.spec.rungs and not self._stop.is_set():
                outcome = self._run_rung(k, attempt=retries)
                if outcome == "promoted":
                    k, retries = k + 1, 0
                elif outcome == "rejected" and self.spec.promotion.on_reject == "retry" \
                        and retries < self.spec.promotion.max_retries:
                    retries += 1
                else:
                    break
            final = State.STOPPED if self._stop.is_set() or k <= self.spec.rungs else State.COMPLETED
            self.registry.log_ladder_chart(self.parent_run, str(Path(self.spec.workdir) / self.spec.name))
            self.registry.end_run(self.parent_run)
            self._set(state=final)
        except Exception as exc:  # the controller records why it failed and stays queryable
            self._set(state=State.FAILED, error=f"{type(exc).__name__}: {exc}".splitlines()[0])
            if getattr(self, "parent_run", None):
                self.registry.end_run(self.parent_run, "FAILED")
        return self.status()

    def _current_judge(self, k: int):
        from ladder.rung_driver import resolve_initial_judge

        if k == 1:
            return resolve_initial_judge(self.spec)
        return self.registry.resolve_judge_uri(f"models:/{self.spec.name}@judge", self._cache())

    def _student_init(self) -> tuple[str, str]:
        champion = self.registry.alias("champion")
        if self.spec.student.init == "previous" and champion is not None:
            return self.registry.download(champion, self._cache()), f"v{champion}"
        return self.spec.student.base, "base"

    def _cache(self) -> str:
        return str(Path(self.spec.workdir) / self.spec.name / "registry-cache")

    def _run_rung(self, k: int, attempt: int) -> str:
        from ladder.gate import measure
        from ladder.rung import Rung

        rspec = self.spec.for_rung(k)
        task, calibration = self.task_for(k)
        judge = self._current_judge(k)
        student_path, init_label = self._student_init()
        run_id = self.registry.start_rung_run(self.parent_run, k, self.job)
        self._set(rung=k, step=0, latest={})
        rung = Rung(rspec, task, student_path, judge, self.spec.seed + 1000 * k + attempt)
        try:
            rung.ready()
            self._probe_judge(rung, calibration, run_id)
            start_eval = rung.evaluate()
            self.registry.log_metrics(run_id, start_eval, 0)
            self._train(rung, run_id)
            final_eval = rung.evaluate()
            self.registry.log_metrics(run_id, final_eval, self.step)
            current = measure(rung.pool, calibration)
            ckpt = rung.save_student(str(Path(self.spec.workdir) / self.spec.name / f"rung-{k}" / "candidate"))
        finally:
            rung.shutdown()
        tags = {"ladder.rung": str(k), "ladder.judge": judge.label, "ladder.student_init": init_label,
                "ladder.spec_sha256": self.spec.sha256(), "ladder.job": self.job,
                "ladder.rung_uid": f"{self.job}-{k}-{attempt}", "ladder.task": rspec.task_label(),
                "ladder.judge_mode": "verifier" if judge.kind == "verifier" else rspec.judge.mode}
        version = self.registry.register(run_id, ckpt, tags)
        baseline = self._baseline_accuracy(start_eval)
        decision = self.decide(version, ckpt, k, run_id, current, judge.kind == "verifier",
                               final_eval.get("eval/accuracy"), baseline)
        self.registry.end_run(run_id)
        with self._lock:
            self.history.append({"rung": k, "version": version, "judge": judge.label, "status": decision,
                                 "accuracy": final_eval.get("eval/accuracy"),
                                 "judge_auc": self.latest.get("gate/candidate_auc")})
        return decision

    def _baseline_accuracy(self, start_eval: dict) -> Optional[float]:
        """The last promoted rung's held-out accuracy; before any promotion, the student's at step 0."""
        champion = self.registry.alias("champion")
        if champion is not None:
            recorded = self.registry.heldout_accuracy(champion)
            if recorded is not None:
                return recorded
        return start_eval.get("eval/accuracy")

    def _probe_judge(self, rung, calibration, run_id: str) -> None:
        """Record the judge pool's scores of fixed calibration items: proof of which weights it serves."""
        import json

        from ladder.gate import score_calibration

        if rung.pool.verifier is None:
            scores = score_calibration(rung.pool, calibration[:8])
            self.registry.client.set_tag(run_id, "ladder.judge_probe", json.dumps([round(s, 6) for s in scores]))

    def _train(self, rung, run_id: str) -> None:
        spec = rung.spec  # this rung's spec, schedule applied
        approvals: list[float] = []
        for step in range(1, spec.train.steps + 1):
            if self._stop.is_set():
                break
            metrics = rung.step()
            if step % spec.eval.every == 0 and step != spec.train.steps:
                metrics.update(rung.evaluate())
            self.registry.log_metrics(run_id, metrics, step)
            self.registry.log_judge_examples(run_id, step, rung.last_examples)
            self._set(step=step, latest=metrics)
            approvals.append(metrics["judge/approval"])
            if saturated(approvals, spec.saturation):
                self.registry.client.set_tag(run_id, "ladder.ended_by", "saturation")
                break

    def decide(self, version: str, ckpt: str, k: int, run_id: str, current, current_is_verifier: bool,
               student_accuracy: Optional[float] = None, baseline: Optional[float] = None) -> str:
        """Gate the candidate as a judge (next rung's mode, on a judge pool), then promote / reject
        (auto) or wait for a person (manual)."""
        gate = self.gate(ckpt, k, current, current_is_verifier, student_accuracy, baseline)
        self.registry.log_metrics(run_id, gate.metrics(), self.step)
        self._set(latest={**self.latest, **gate.metrics()})
        self.registry.record_gate(version, gate)
        if self.spec.promotion.policy == "manual":
            return self._await_decision(version)
        if gate.passed:
            self.registry.promote(version, by="auto", reason=gate.reason)
            return "promoted"
        self.registry.reject(version, by="auto", reason=gate.reason)
        return "rejected"

    def gate(self, ckpt: str, k: int, current, current_is_verifier: bool,
             student_accuracy: Optional[float] = None, baseline: Optional[float] = None):
        """The candidate measured as a judge on judge workers, in the mode rung k+1 will use."""
        from ladder.gate import decide_gate, measure
        from ladder.rung import ResolvedJudge, build_judge_pool
        from stages.actors import kill_all

        nxt = self.spec.for_rung(min(k + 1, self.spec.rungs))
        task, calibration = self.task_for(min(k + 1, self.spec.rungs))
        pool = build_judge_pool(nxt, ResolvedJudge("model", ckpt, "candidate"), task.answer_pattern, self.spec.seed)
        try:
            candidate = measure(pool, calibration)
        finally:
            kill_all(pool.workers)
        return decide_gate(candidate, current, self.spec.promotion, current_is_verifier, student_accuracy, baseline)

    def _await_decision(self, version: str, poll_s: float = 1.0) -> str:
        """Wait until a person promotes or rejects the version (written to MLflow), or a stop."""
        self._set(state=State.AWAITING_PROMOTION)
        while not self._stop.is_set():
            status = self.registry.status_of(version)
            if status in ("promoted", "rejected"):
                self._set(state=State.RUNNING)
                return status
            time.sleep(poll_s)
        return "stopped"


def start_controller(spec, job: Optional[str] = None):
    """The named, detached controller actor of this ladder (namespace `ladder`)."""
    from stages.actors import spawn

    return spawn(LadderController, spec, job, num_cpus=0, name=spec.name, namespace="ladder",
                 max_concurrency=4)
