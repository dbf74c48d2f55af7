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
        """Open the registry and build the task and the judge calibration set."""
        from ladder.registry import Registry
        from ladder.tasks import build_task

        self.registry = Registry.for_spec(self.spec)
        self.task = build_task(self.spec.task, self.spec.seed)
        self.calibration = self.task.calibration(self.spec.eval.calibration_size, self.spec.seed + 7)

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
        from ladder.rung import Rung

        judge = self._current_judge(k)
        student_path, init_label = self._student_init()
        run_id = self.registry.start_rung_run(self.parent_run, k, self.job)
        self._set(rung=k, step=0, latest={})
        rung = Rung(self.spec, self.task, student_path, judge, self.spec.seed + 1000 * k + attempt)
        try:
            rung.ready()
            self._probe_judge(rung, run_id)
            self._train(rung, run_id)
            final_eval = rung.evaluate()
            self.registry.log_metrics(run_id, final_eval, self.step)
            ckpt = rung.save_student(str(Path(self.spec.workdir) / self.spec.name / f"rung-{k}" / "candidate"))
        finally:
            rung.shutdown()
        tags = {"ladder.rung": str(k), "ladder.judge": judge.label, "ladder.student_init": init_label,
                "ladder.spec_sha256": self.spec.sha256(), "ladder.job": self.job,
                "ladder.rung_uid": f"{self.job}-{k}-{attempt}"}
        version = self.registry.register(run_id, ckpt, tags)
        decision = self.decide(version, ckpt, judge, run_id)
        self.registry.end_run(run_id)
        with self._lock:
            self.history.append({"rung": k, "version": version, "judge": judge.label, "status": decision,
                                 "accuracy": final_eval.get("eval/accuracy"),
                                 "judge_accuracy": self.latest.get("gate/candidate_accuracy")})
        return decision

    def _probe_judge(self, rung, run_id: str) -> None:
        """Record the judge pool's verdicts on fixed calibration items: proof of which weights it serves."""
        import json

        items = self.calibration[:8]
        if rung.pool.verifier is None:
            scores, _ = rung.pool.score_pairs([c.prompt for c in items], [c.response for c in items])
            self.registry.client.set_tag(run_id, "ladder.judge_probe", json.dumps([round(s, 6) for s in scores]))

    def _train(self, rung, run_id: str) -> None:
        spec = self.spec
        approvals: list[float] = []
        for step in range(1, spec.train.steps + 1):
            if self._stop.is_set():
                break
            metrics = rung.step()
            if step % spec.eval.every == 0 and step != spec.train.steps:
                metrics.update(rung.evaluate())
            self.registry.log_metrics(run_id, metrics, step)
            self._set(step=step, latest=metrics)
            approvals.append(metrics["judge/approval"])
            if saturated(approvals, spec.saturation):
                self.registry.client.set_tag(run_id, "ladder.ended_by", "saturation")
                break

    def decide(self, version: str, ckpt: str, judge, run_id: str) -> str:
        """Gate the candidate as a judge, then promote / reject (auto) or wait for a person (manual)."""
        from ladder.gate import run_gate
        from ladder.rung import ResolvedJudge

        gate = run_gate(ResolvedJudge("model", ckpt, f"v{version}"), judge, self.calibration, self.spec)
        self.registry.log_metrics(run_id, gate.metrics(), self.step)
        self._set(latest={**self.latest, **gate.metrics()})
        for key, value in {"ladder.gate": "pass" if gate.passed else "fail", "ladder.gate_reason": gate.reason,
                           "ladder.judge_accuracy": f"{gate.candidate.accuracy:.4f}"}.items():
            self.registry.client.set_model_version_tag(self.registry.name, version, key, value)
        if self.spec.promotion.policy == "manual":
            return self._await_decision(version)
        if gate.passed:
            self.registry.promote(version, by="auto", reason=gate.reason)
            return "promoted"
        self.registry.reject(version, by="auto", reason=gate.reason)
        return "rejected"

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
