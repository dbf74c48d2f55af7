"""The ladder controller: a named, detached Ray actor; a transition function over the ladder's saved progress.

`run()` loads the progress (or starts it), runs the handler of its phase, saves it, and repeats until the
ladder is stopped, done or failed; MLflow holds the progress, lineage and decisions, so a restart reads them back.
The handlers live beside their phases: `train_phase.py` (train) and `gate_phase.py` (register, gate, await).
"""
from __future__ import annotations

import contextlib
import threading
import uuid
from pathlib import Path
from typing import Optional

from ladder.control import gate_phase, stops, train_phase
from ladder.control.lifetime import after_restart, end_later, restarted_by_ray
from ladder.control.lease import LeaseLost, take_lease
from ladder.control.live_status import LiveStatus
from ladder.progress import Phase, Progress, State
from ladder.errors import first_line
from ladder.rung.stageset import StageSet
from ladder.tasks.sets import check_data, data_hashes
from stages.actors import StopRequested, actor_died, as_start_error, kill_all, real_error, spawn


class LadderController:
    """Runs rungs 1..spec.rungs: train against the current judge, register, gate, promote."""

    HANDLERS = {Phase.TRAIN: train_phase.train, Phase.REGISTER: gate_phase.register, Phase.GATE: gate_phase.gate,
                Phase.AWAIT: gate_phase.await_decision}  # phase -> (controller, progress) -> next progress

    def __init__(self, spec, job: Optional[str] = None, resume: bool = False, submission: Optional[str] = None,
                 lease_token: Optional[str] = None):
        self.spec = spec
        self.job = job or uuid.uuid4().hex[:8]
        self.lease_token = lease_token or uuid.uuid4().hex  # this controller's (kept by a Ray restart of it)
        self.lease = None
        self.resume, self.submission = resume, submission
        self.progress = Progress(spec.name, self.job)
        self.live = LiveStatus()
        self.stages = StageSet()  # stage actors kept from rung to rung (models loaded in place)
        self.actors: list = []    # the stage actors of the phase now running (`stop --now` kills them)
        self._stop, self._now = threading.Event(), threading.Event()  # a stop asked for; a stop --now
        self._lock, self._running, self._ran = threading.Lock(), threading.Lock(), False
        self.restarted = restarted_by_ray()
        if self.restarted:  # whoever called `run` may be gone with the old process: go on by ourselves
            threading.Thread(target=self.run, daemon=True).start()

    # control ------------------------------------------------------------------------------
    def status(self) -> dict:
        step, latest, history = self.live.snapshot()
        with self._lock:
            p = self.progress
            steps = self.spec.for_rung(max(p.rung, 1)).train.steps  # the schedule may change them from rung to rung
            return {**p.summary(), "step": max(step, p.step), "steps_per_rung": steps,
                    "rungs": self.spec.rungs, "latest": latest, "history": history, "source": "controller"}

    def stop(self, now: bool = False, saved: bool = False) -> str:
        """Graceful: finish the step, checkpoint, stop. `now`: abort the step (its stage actors are killed). Saved
        to MLflow first (unless read from there: `saved`), so a controller restarted by Ray keeps it."""
        if not saved:
            stops.record(self, now)
        self._stop.set()
        self.stages.guard.refuse()  # no stage actor starts from now on, a replacement of a dead one included
        if now:
            self._now.set()
            self.stages.guard.kill_started()  # every stage actor started, gate workers and replacements too
            kill_all(self.actors)
        with self._lock:
            if self.progress.active:
                self.progress = self.progress.to(state=State.STOPPING)
            return self.progress.state.value

    def lost(self) -> None:
        """The lease was taken over: stop, writing nothing (not even the stop request: the run is another's now)."""
        self.stop(saved=True)

    def stopping(self) -> bool:
        """A stop was asked for (the handlers end at the next step boundary)."""
        return self._stop.is_set()

    def aborted(self) -> bool:
        """`stop --now`: the stage actors were killed mid-step."""
        return self._now.is_set()

    @property
    def history(self) -> list[dict]:
        return self.live.snapshot()[2]

    @property
    def name_prefix(self) -> str:
        """What this ladder's stage actors are named after: `<ladder>.<job>`."""
        return f"{self.spec.name}.{self.job}"

    def save(self, progress: Progress) -> Progress:
        """The progress from now on (a stop asked for meanwhile marks it stopping), saved to MLflow."""
        with self._lock:
            if self._stop.is_set() and progress.state is State.RUNNING:
                progress = progress.to(state=State.STOPPING)
            self.progress = progress
        self.registry.save_progress(progress)
        return progress

    # the transition function --------------------------------------------------------------
    def prepare(self) -> None:
        """Open the registry; tasks and calibration sets are built per rung (the schedule may change them)."""
        from ladder.tasks.sets import TaskSets
        from ladder.registry.registry import Registry
        from ladder.control.rung_store import RunCalibration, RungStore

        self.registry = Registry.for_spec(self.spec, retry_s=self.spec.mlflow.retry_s)
        self.registry.buffer_writes()  # the step loop goes on through an MLflow outage
        self.store = RungStore(self.registry, Path(self.spec.workdir) / self.spec.name / self.job,
                               self.spec.checkpoint_every)
        self.tasks = TaskSets(self.spec, self.store.root, RunCalibration(self))
        self.tasks.task(1)  # a dataset problem fails here, before any actor starts

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
            threading.Thread(target=stops.watch, args=(self, self._done), daemon=True).start()
            while p.active and p.phase is not Phase.DONE:
                if self._stop.is_set():
                    p = self.save(p.to(state=State.STOPPED))
                    break
                p = self.save(self._transition(p))
            self._finish(p)
        except Exception as exc:  # the controller records why it failed and stays queryable
            exc = real_error(as_start_error(exc))  # an actor's own error (a start's too), not Ray's header
            p = self.progress.to(state=State.FAILED, error=f"{type(exc).__name__}: {first_line(exc, None)}")
            if not isinstance(exc, LeaseLost):  # a controller whose lease was taken: no writes
                self.registry_safely(lambda reg: p.rung_run and reg.fail_run(p.rung_run, f"failed: {p.error}"))
            self._finish(p)
        finally:
            self._done.set()
            kill_all(self.actors)
            self.stages.guard.kill_started()  # any started outside a phase's own cleanup (a start a stop refused)
            end_later()

    def _transition(self, p: Progress) -> Progress:
        """The next progress from `p`'s phase handler; a stop that refused an actor start stops at the last save, and
        so does a call to a stage actor that `stop --now` killed meanwhile (in any phase: the gate's too)."""
        try:
            return self.HANDLERS[p.phase](self, p)
        except Exception as err:
            if isinstance(err, StopRequested) or (self.aborted() and actor_died(err)):
                return self.progress.to(state=State.STOPPED)
            raise

    def _begin(self) -> Progress:
        """A new job's progress, or the saved one of this job: on `resume`, and when Ray restarts a controller
        that died (it is constructed again with the same job, and re-enters the saved phase)."""
        saved = self.registry.load_progress(self.job)
        if saved is None:
            parent = self.registry.start_ladder_run(self.spec, self.job)
            self.lease = take_lease(self.registry, parent, self.job, self.lease_token, self.submission, self.lost,
                                    new=True, renew_s=self.spec.mlflow.lease_renew_s)  # LeaseHeld if another runs it
            self.registry.save_spec(parent, self.spec)
            return self.save(Progress(self.spec.name, self.job, parent_run=parent, submission=self.submission,
                                      data=data_hashes(self.spec)).to(state=State.RUNNING))
        if not saved.active and not self.resume:  # a restart after the ladder had ended: nothing to do
            return saved
        self.lease = take_lease(self.registry, saved.parent_run, self.job, self.lease_token, self.submission,
                                self.lost, renew_s=self.spec.mlflow.lease_renew_s)
        self.progress = saved  # the lease is ours: a failure from here is recorded on the saved progress
        self.registry.reopen_run(saved.parent_run)
        data = check_data(self.spec, saved.data)  # a dataset file changed since the start: refused, not split anew
        if self.resume and not self.restarted:  # a restart (of a resumed one too) keeps a stop asked for
            self.registry.clear_stop_request(saved.parent_run)
        stops.act_on(self, self.registry.stop_request(saved.parent_run))  # saved before a restart: acted on now
        if saved.phase is Phase.DONE and saved.results.ended == "rejected":
            saved = saved.to(phase=Phase.AWAIT)  # a decision by hand since the rejection is read again
        self.live.resume(saved.results.history)
        going_on = saved.to(state=State.RUNNING, error=None, submission=self.submission, data=data)
        return self.save(after_restart(going_on, self.restarted, self.spec.controller_restarts))  # counted, waited

    def _finish(self, p: Progress) -> None:
        with self._lock:
            self.progress = p.to(phase=Phase.DONE) if p.state is State.COMPLETED else p
        self.registry_safely(lambda reg: reg.close_ladder(self.progress, str(Path(self.spec.workdir) / self.spec.name)))
        if self.lease is not None:
            self.lease.release()

    def registry_safely(self, write) -> None:
        """A last write to MLflow on the way out; MLflow (or the start itself) may be what failed."""
        with contextlib.suppress(Exception):
            write(self.registry)

    # what the phase handlers hand back (`phase.PhaseContext`) ----------------------------------
    def hold(self, actors: list) -> None:
        """The stage actors of the phase now running (a `stop --now` kills them)."""
        self.actors = actors

    def keep(self, stages: StageSet) -> None:
        """The stage set the next phase takes over."""
        self.stages = stages


def start_controller(spec, job: Optional[str] = None, resume: bool = False, submission: Optional[str] = None):
    """The named, detached controller actor of this ladder (namespace `ladder`): it outlives the driver that
    started it (a killed `ladder run` or `ray job stop` does not orphan the ladder's stage actors: they are
    the controller's, and the controller ends itself once the ladder is stopped or done). If its process dies, Ray
    starts it again (`controller_restarts`, then once more to record the ladder failed) and retries `run` on it."""
    job = job or uuid.uuid4().hex[:8]  # chosen here: a restarted controller is built from these same arguments
    token = uuid.uuid4().hex  # the lease's: a restarted controller is this one, and keeps its lease
    return spawn(LadderController, spec, job, resume, submission, token, resources=spec.resources.controller,
                 name=spec.name, namespace="ladder", detached=True, max_concurrency=4,
                 max_restarts=spec.controller_restarts + 1, max_task_retries=-1)

