"""Faults at two points of a rung that only a controller's own bookkeeping can get wrong, on real Ray actors, vLLM and
MLflow (SQLite), with the controller's phases run in this process (issue 35, items 2 and 7):

- a rung rejected and retried (`on_reject: retry`) whose trainer dies after the retry's first checkpoint restores the
  retry's own checkpoint, not the first attempt's at the same step (checked by the weights' checksum);
- a controller that dies right after logging the rung's model (before its progress says so) and re-enters the rung
  from its last checkpoint registers the weights it evaluated after the restart, not the model logged before the
  crash (checked by the weights' checksum)."""
import hashlib
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


class Crash(BaseException):
    """The controller's process dying at a point of its own choosing: nothing of the phase handles it."""


def spec_dict(model: str, workdir: Path) -> dict:
    return {
        "name": "ctl-faults", "seed": 0, "rungs": 2, "workdir": str(workdir), "checkpoint_every": 2,
        "student": {"base": model, "init": "previous"},
        "judge": {"initial": {"kind": "verifier", "function": "ladder.tasks.arithmetic:exact"}},
        "task": {"source": {"kind": "builtin", "name": "arithmetic", "train_size": 500}, "eval_size": 8},
        "rollout": {"workers": 1, "group_size": 4, "max_tokens": 32, "temperature": 1.0, "kv_cache_gib": 0.25},
        "train": {"lr": 1e-3, "kl_coef": 0.0, "steps": 4, "prompts_per_step": 4},
        "eval": {"every": 4, "calibration_size": 8, "yardstick_size": 0},
        "promotion": {"policy": "auto", "on_reject": "retry", "max_retries": 1},
    }


def digest(folder) -> str:
    """sha256 of a model's weights files (safetensors) in a folder, in name order."""
    h = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*.safetensors")):
        h.update(path.read_bytes())
    return h.hexdigest()


class Faults:
    """What the test does to the controller `ctl` at its saves and writes: the trainer SIGKILLed once right after
    each attempt's first checkpoint is saved; a crash right after the first model logged for `crash_attempt`; the
    checkpoint folders restored and the weights of every model logged, as checksums."""

    def __init__(self, ray, ctl, crash_attempt: int):
        self.ray, self.ctl, self.crash_attempt = ray, ctl, crash_attempt
        self.killed, self.restored, self.logged, self.crashed = set(), [], [], False
        save, local, log = ctl.save, ctl.store.local_checkpoint, ctl.registry.log_model
        ctl.save = lambda p: self.after_save(save(p))
        ctl.store.local_checkpoint = lambda p: self.after_restore(p, local(p))
        ctl.registry.log_model = lambda run, hf_dir, *a, **kw: self.after_log(hf_dir, log(run, hf_dir, *a, **kw))

    def after_save(self, p):
        if p.checkpoint and p.step == 2 and p.attempt not in self.killed:
            self.killed.add(p.attempt)
            (trainer,) = [a for a in self.ctl.actors if a._ray_actor_creation_function_descriptor.class_name == "Trainer"]
            self.ray.kill(trainer, no_restart=True)  # the next step's call finds it dead
        return p

    def after_restore(self, p, folder: str) -> str:
        self.restored.append((p.attempt, p.step, p.checkpoint, digest(folder)))
        return folder

    def after_log(self, hf_dir: str, model_id: str) -> str:
        self.logged.append((self.ctl.progress.attempt, digest(hf_dir), model_id))
        if self.ctl.progress.attempt == self.crash_attempt and not self.crashed:
            self.crashed = True
            raise Crash(model_id)
        return model_id


def train_through_restarts(ctl, p):
    """The controller's loop over the train phase: a trainer death re-enters the rung from its checkpoint."""
    from ladder.control import train_phase
    from ladder.progress import Phase

    while p.phase is Phase.TRAIN:
        p = ctl.save(train_phase.train(ctl, p))
    return p


def checkpoint_digest(ctl, uri: str, tmp: Path) -> str:
    return digest(ctl.registry.download_checkpoint(uri, str(tmp / hashlib.sha256(uri.encode()).hexdigest()[:8])))


def test_a_retried_rung_restores_its_own_checkpoint_and_a_crash_after_logging_registers_the_evaluated_weights(
        ray_local, tiny_model, tmp_path, fault_figures):
    from ladder.control import gate_phase
    from ladder.control.controller import LadderController
    from ladder.progress import Phase, Progress, State
    from ladder.spec import parse_spec
    from stages.models import fetch_model

    ctl = LadderController(parse_spec(spec_dict(tiny_model, tmp_path / "w")), job="job")
    ctl.prepare()
    faults = Faults(ray_local, ctl, crash_attempt=1)
    try:
        parent = ctl.registry.start_ladder_run(ctl.spec, "job")
        p = ctl.save(Progress(ctl.spec.name, "job", parent_run=parent).to(state=State.RUNNING))
        # attempt 0: its trainer killed after step 2's checkpoint, restored from it; the candidate rejected by hand
        p = gate_phase.register(ctl, train_through_restarts(ctl, p))
        ctl.registry.reject(p.candidate, by="human", reason="retry it")
        p = ctl.save(gate_phase.gate(ctl, p))
        assert (p.rung, p.attempt, p.phase, p.step) == (1, 1, Phase.TRAIN, 0)
        # attempt 1: its trainer killed after its own step-2 checkpoint; then the controller dies right after
        # logging the rung's model, and the rung is re-entered from its last checkpoint (step 2) as a restart does
        with pytest.raises(Crash):
            train_through_restarts(ctl, p)
        p = ctl.registry.load_progress("job")
        assert (p.attempt, p.phase, p.step) == (1, Phase.TRAIN, 2), p
        p = gate_phase.register(ctl, train_through_restarts(ctl, p))
        registered = digest(fetch_model(f"models:/{ctl.spec.name}/{p.candidate}", ctl.registry.tracking_uri,
                                        str(tmp_path / "fetched")))
    finally:
        ctl.stages.release()

    (a0, a1, again) = faults.restored
    assert (a0[:2], a1[:2], again[:2]) == ((0, 2), (1, 2), (1, 2))
    assert a0[2] != a1[2]  # two checkpoints at step 2, one per attempt
    first, retried = (checkpoint_digest(ctl, uri, tmp_path) for uri in (a0[2], a1[2]))
    assert first != retried, "the attempts' step-2 weights are the same: the scenario shows nothing"
    assert a1[3] == retried, "the retried rung restored the first attempt's checkpoint"

    (_, before_crash, _), (_, crash, crashed_id), (_, evaluated, kept_id) = faults.logged
    assert crash != evaluated, "the redone steps gave the same weights: the scenario shows nothing"
    assert kept_id != crashed_id and registered == evaluated, "registered: the model logged before the crash"
    fault_figures("trainer SIGKILL after the first checkpoint of a rung retried after a rejection",
                  "the retry restored its own step-2 checkpoint (weights checksum equal; the first attempt's "
                  "differs)")
    fault_figures("controller crash right after logging the rung's model",
                  "re-entered from step 2, redid steps 3-4, registered the weights it evaluated then "
                  "(checksum equal; the model logged before the crash differs)")
