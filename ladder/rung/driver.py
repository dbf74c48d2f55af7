"""One rung: rollout -> judge -> train -> weight sync, for N steps, with evaluation.

`Rung` owns the stage actors of one generation and keeps their engines alive across steps.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from cluster.placement import role_resources
from ladder.progress import ResolvedJudge
from ladder.rung.prompt_cursor import PromptCursor
from ladder.rung.metrics import flips, judge_health, length_health, reward_truth, saturated
from ladder.tasks.base import Task
from stages.actors import StepTimeout, get_within, raise_if_start_failed
from stages.batches import JudgedBatch, PromptBatch, RolloutBatch


def split(items: list, parts: int) -> list[list]:
    k, r = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + k + (i < r)
        out.append(items[start:end])
        start = end
    return out


@dataclass
class CollectedBatch:
    """A judged batch and what it took: wall seconds of rollout and judging, seconds of work inside the stage
    actors, the prompt cursor before it was drawn, and the version of the weights that sampled it."""
    judged: JudgedBatch
    rollout_s: float
    judge_s: float
    work_s: dict
    cursor: dict
    version: int


class Rung:
    """The stage actors of one rung and the step loop that drives them.

    `stages` (a `StageSet`) holds the previous rung's actors: they are taken over, with this rung's student and
    judge loaded in place, where their settings allow; `handover()` gives them to the next rung."""

    def __init__(self, spec, task: Task, student_path: str, judge: ResolvedJudge, seed: int,
                 name_prefix: Optional[str] = None, stages=None):
        from ladder.rung.roles import start_roles
        from ladder.rung.stageset import StageSet
        from ladder.rung.sync import announce

        self.spec, self.task, self.judge = spec, task, judge
        self.cursor = PromptCursor(len(task.train), seed)
        self.stages = stages if stages is not None else StageSet()
        roles = start_roles(spec, task, student_path, judge, seed, name_prefix, self.stages)
        self.chat, self.pool, self.trainer, self.rollout = roles.chat, roles.pool, roles.trainer, roles.rollout
        self._start_rollout = roles.start_rollout
        self.lora_sync, self.lora_why = roles.lora_sync  # a LoRA rung: "adapter" or "merged" (why); else ""
        self.sync_bytes = 0  # bytes the last sync put in the object store
        announce(self)
        self.rollout_replaced = 0
        self._weights = None  # the last weights pushed to the rollout workers (a replacement loads them)
        self._sync_group = False  # (sync.backend collective) a sync group of the trainer and the engines is formed
        self.step_no = 0
        self.weights_version = 0
        self.ended_why = ""  # why the step loop ended early (the collapse guard's reason)
        self.eval_right: dict[str, bool] = {}  # held-out prompt -> right at the last evaluation
        self._best = None  # (collapse guard) the best weights of the rung so far, in the object store
        self.last_examples: tuple = ()  # a few judge inputs and outputs of the last step
        self.last_samples: tuple = ()   # a few student inputs (as rendered), responses and rewards of the last step
        self.last_skip = ""
        self.work_s: dict[str, float] = {}  # the last step's seconds of work inside the stage actors
        self._next: Optional[CollectedBatch] = None  # (train.overlap) the next step's batch, collected during this one

    def handover(self):
        """This rung's actors (dead ones replaced) for the next rung to take over; the rung is not used after."""
        self.stages.set("trainer", [self.trainer])
        self.stages.set("rollout", self.rollout)
        if self.pool.workers:
            self.stages.set("verifier" if self.pool.verifies else "judges", self.pool.workers)
        return self.stages

    def actors(self) -> list:
        return [self.trainer, *self.rollout, *self.pool.workers]

    def ready(self) -> float:
        """Block until every engine is up; returns the seconds waited. An actor whose constructor raised fails it
        at once (`ActorStartError`), one that no node takes within `resources.placement_timeout_s` too
        (`PlacementError`)."""
        from stages.actors import wait_ready

        res, t0 = self.spec.resources, time.perf_counter()
        rollout, judge = role_resources(self.spec, "rollout"), role_resources(self.spec, "judge")
        wait_ready([("trainer", self.trainer, res.trainer)] + [("rollout", w, rollout) for w in self.rollout]
                   + [("judge", w, judge) for w in self.pool.workers], res.placement_timeout_s, res.step_timeout_s)
        return time.perf_counter() - t0

    def next_prompts(self) -> PromptBatch:
        rows = [self.task.train[i] for i in self.cursor.next(self.spec.train.prompts_per_step)]
        return PromptBatch(tuple(r.prompt for r in rows), tuple(r.answer for r in rows))

    def generate(self, batch: PromptBatch, n: int, temperature: float) -> RolloutBatch:
        """Prompts split over the rollout workers; `n` samples each."""
        import ray

        ro = self.spec.rollout
        idx = list(range(len(batch.prompts)))
        parts = [p for p in split(idx, len(self.rollout)) if p]
        inputs = [self.chat.user(p) for p in batch.prompts]  # as the student sees them (its chat template)
        call = lambda k: self.rollout[k].timed.remote(  # noqa: E731
            "generate", [inputs[i] for i in parts[k]], n, ro.max_tokens, temperature, ro.top_p)
        refs = [call(k) for k in range(len(parts))]
        results, seconds, timeout = [], [0.0], self.spec.resources.step_timeout_s
        deadline = time.monotonic() + timeout
        for k, ref in enumerate(refs):
            while True:
                try:
                    result, busy = get_within(ref, deadline, "rollout", timeout)
                    break
                except (ray.exceptions.RayActorError, StepTimeout) as exc:  # dead or hung: a re-synced
                    raise_if_start_failed(exc)  # replacement redoes its part (one that never started would not)
                    self._replace_rollout(k, exc)
                    ref, deadline = call(k), time.monotonic() + timeout
            results.append(result)
            seconds.append(busy)
        self.work_s["rollout"] = max(seconds)  # the workers run side by side
        prompts, refs_out, samples, group = [], [], [], []
        for part, result in zip(parts, results):
            for i, group_samples in zip(part, result):
                for s in group_samples:
                    prompts.append(batch.prompts[i])
                    refs_out.append(batch.references[i])
                    samples.append(s)
                    group.append(i)
        return RolloutBatch(tuple(prompts), tuple(refs_out), tuple(samples), tuple(group))

    def _replace_rollout(self, k: int, why: Optional[Exception] = None) -> None:
        """A new rollout worker in place of dead (or hung: `why` a StepTimeout) worker `k`, serving the current
        weights before it is used."""
        from stages.actors import kill_all, wait_ready

        if self.rollout_replaced >= self.spec.worker_replacements:
            hung = f"{why}; " if isinstance(why, StepTimeout) else ""
            raise RungFailed(f"{hung}rollout workers died {self.rollout_replaced + 1} times in this rung "
                             f"(worker_replacements is {self.spec.worker_replacements}): a worker that keeps dying "
                             "is not replaced again")
        kill_all([self.rollout[k]], wait_s=5.0)
        self.rollout[k] = self.stages.start(lambda: self._start_rollout(k))  # none once a stop was requested
        self.rollout_replaced += 1
        res = self.spec.resources
        wait_ready([("rollout", self.rollout[k], role_resources(self.spec, "rollout"))], res.placement_timeout_s,
                   res.step_timeout_s)
        if self.spec.sync.backend == "collective":
            self._sync_group = False  # the next sync forms a fresh group with the replacement
            if self.weights_version:
                from ladder.rung.sync import collective_sync

                collective_sync(self)
        elif self._weights is not None:
            from ladder.rung.sync import load_method

            load = getattr(self.rollout[k], load_method(self)).remote(self._weights)
            get_within(load, time.monotonic() + res.step_timeout_s, "rollout", res.step_timeout_s)

    def collect(self) -> CollectedBatch:
        """The next prompts, rolled out and judged, with what that took."""
        cursor, version = self.cursor.state(), self.weights_version
        t0 = time.perf_counter()
        rollout = self.generate(self.next_prompts(), self.spec.rollout.group_size, self.spec.rollout.temperature)
        t1 = time.perf_counter()
        judge_before = self.pool.work_s
        judged = self.pool.score(rollout, guide=True)  # a training batch: solve_guide applies
        work_s = {"rollout": self.work_s["rollout"], "judge": self.pool.work_s - judge_before}
        return CollectedBatch(judged, t1 - t0, time.perf_counter() - t1, work_s, cursor, version)

    def cursor_state(self) -> dict:
        """The prompt cursor of the batches trained so far (a batch collected ahead is drawn again on resume)."""
        return self._next.cursor if self._next is not None else self.cursor.state()

    def step(self, prefetch: bool = True) -> dict[str, float]:
        """One GRPO step; returns its metrics (reward, KL, loss, tokens/s, per-stage seconds). With
        `train.overlap` (and `prefetch`) the next step's batch is rolled out and judged while this one trains, by
        the weights before this update: one step off-policy."""
        t0 = time.perf_counter()
        batch = self._next or self.collect()
        collected_now = self._next is None
        self._next = None
        t1 = time.perf_counter()
        trained_from = self.weights_version  # the weights this update starts from
        training, sent = self.trainer.step.remote(batch.judged), time.monotonic()
        ahead = 0.0
        if self.spec.train.overlap and prefetch:
            self._next = self.collect()  # the rollout workers still serve the weights before this update
            ahead = sum(self._next.work_s.values())
        timeout = self.spec.resources.step_timeout_s  # a hung trainer restarts the rung from its checkpoint
        stats = get_within(training, sent + timeout, "trainer", timeout)
        t3 = time.perf_counter()
        self.work_s["sync"] = 0.0
        if not stats.skipped:  # no update: the rollout workers already hold these weights
            self.sync()
        t4 = time.perf_counter()
        self.work_s = {**batch.work_s, "train": stats.seconds, "sync": self.work_s["sync"]}
        busy = (sum(batch.work_s.values()) if collected_now else 0.0) + max(stats.seconds, ahead) + self.work_s["sync"]
        overhead = max(0.0, (t4 - t0) - busy)
        self.step_no += 1
        self.last_examples = batch.judged.examples
        self.last_samples = tuple({"student_input": self.chat.user(p), "response": r, "reward": round(s, 4)}
                                  for p, r, s in list(zip(batch.judged.rollout.prompts, batch.judged.rollout.responses,
                                                          batch.judged.scores))[:4])
        self.last_skip = stats.skipped
        rollout, judged = batch.judged.rollout, batch.judged
        tokens = rollout.n_tokens
        return {
            "reward/mean": stats.reward_mean, "reward/std": stats.reward_std, "train/kl": stats.kl,
            "train/loss": stats.loss, "train/grad_norm": stats.grad_norm, "train/clip_frac": stats.clip_frac,
            "train/logprob_mismatch": stats.logprob_mismatch,
            "train/staleness": float(trained_from - batch.version),  # updates between sampling and training
            "rollout/tokens": float(tokens), "rollout/tokens_per_s": tokens / max(batch.rollout_s, 1e-9),
            "judge/samples_per_s": len(judged.scores) / max(batch.judge_s, 1e-9),
            "time/rollout_s": batch.rollout_s, "time/judge_s": batch.judge_s, "time/train_s": t3 - t1,
            "time/sync_s": t4 - t3, "time/step_s": t4 - t0,
            "time/sync_frac": (t4 - t3) / max(t4 - t0, 1e-9), "time/overhead_s": overhead,
            "time/overhead_frac": overhead / max(t4 - t0, 1e-9), "sync/bytes": float(self.sync_bytes),
            "train/skipped": float(bool(stats.skipped)), "judge/invalid_scores": float(judged.invalid_scores),
            "judge/dropped": float(len(judged.scores) - sum(judged.trainable)),
            "judge/coverage": judged.coverage,  # share of prompts labelled (solve_min_share: the rest abstained)
            "judge/guided": judged.guided,  # groups given the judge's own answer (solve_guide)
            "faults/rollout_replaced": float(self.rollout_replaced), "faults/judge_replaced": float(self.pool.replaced),
            **judge_health(judged.scores, judged.parse_failures),
            **length_health(rollout, judged),
            **reward_truth(self.task, rollout, judged),
        }

    def sync(self) -> int:
        """Push the trainer's weights (a LoRA rung's adapter, or its merged weights) to every rollout worker, in
        place (`sync.backend`)."""
        from ladder.rung.sync import collective_sync, store_sync

        return collective_sync(self) if self.spec.sync.backend == "collective" else store_sync(self)

    def evaluate(self, n: Optional[int] = None) -> dict[str, float]:
        """Held-out greedy answer accuracy (where the task has a verifier) and judge reward."""
        rows = self.task.eval[: n or len(self.task.eval)]
        batch = PromptBatch(tuple(r.prompt for r in rows), tuple(r.answer for r in rows))
        rollout = self.generate(batch, 1, 0.0)
        judged = self.pool.score(rollout)
        out = {"eval/judge_reward": sum(judged.scores) / len(judged.scores)}
        if self.task.verifier is not None:
            right = dict(zip(batch.prompts, self.task.correct(rollout.responses, batch.references, batch.prompts)))
            out["eval/accuracy"] = sum(right.values()) / len(rows)
            out.update(flips(self.eval_right, right))
            self.eval_right = right
            out["eval/verifier_reward"] = sum(self.task.verifier(p, t, r) for p, t, r in
                                              zip(batch.prompts, rollout.responses, batch.references)) / len(rows)
        return out

    def accuracy_on(self, task: Task) -> float:
        """The student's greedy accuracy on another task's held-out prompts (the ladder's yardstick)."""
        rows = task.eval
        batch = PromptBatch(tuple(r.prompt for r in rows), tuple(r.answer for r in rows))
        rollout = self.generate(batch, 1, 0.0)
        return sum(task.correct(rollout.responses, batch.references, batch.prompts)) / len(rows)

    def last_accuracy(self) -> Optional[float]:
        """Held-out accuracy at the last evaluation (None before one)."""
        return sum(self.eval_right.values()) / len(self.eval_right) if self.eval_right else None

    def keep_best(self) -> None:
        """Keep the trainer's current weights as the rung's best (the collapse guard puts them back)."""
        self._best = self.from_trainer(self.trainer.snapshot.remote())

    def from_trainer(self, ref):
        """A trainer call's answer, within resources.step_timeout_s (then StepTimeout: the rung restarts)."""
        timeout = self.spec.resources.step_timeout_s
        return get_within(ref, time.monotonic() + timeout, "trainer", timeout)

    def restore_best(self) -> None:
        """The kept best weights back in the trainer and every rollout worker."""
        if self._best is not None:
            self.from_trainer(self.trainer.load_arrays.remote(self._best))
            self.sync()

    def save_student(self, out_dir: str) -> str:
        """The trained student as an HF directory on *this* node (files come through the object store)."""
        from stages.files import write_files

        write_files(self.from_trainer(self.trainer.model_files.remote()), Path(out_dir))
        return out_dir

    def save_adapter(self, out_dir: str) -> str:
        """(a LoRA rung) The trained adapter's files (peft's format) in a folder on this node."""
        from stages.lora import write_adapter

        return write_adapter(self.from_trainer(self.trainer.checkpoint_files.remote()), Path(out_dir))

    def checkpoint(self, out_dir: str) -> str:
        """A complete checkpoint folder: `model/` (HF files; a LoRA rung's adapter alone), `trainer.pt` (optimizer,
        steps, RNG), `cursor.json`."""
        import json
        import shutil

        from stages.files import write_files

        out = Path(out_dir)
        shutil.rmtree(out / "model", ignore_errors=True)  # no shard of an earlier save may be restored with these
        write_files(self.from_trainer(self.trainer.checkpoint_files.remote()), out / "model")  # mapped, not copied
        (out / "trainer.pt").write_bytes(self.from_trainer(self.trainer.trainer_state.remote()))
        (out / "cursor.json").write_text(json.dumps({**self.cursor_state(), "step": self.step_no}))
        return str(out)

    def restore(self, ckpt_dir: str) -> int:
        """Continue from a checkpoint: trainer weights and optimizer, the data cursor, and the rollout workers
        re-synced to the restored weights before the first step. Returns the restored step."""
        import json

        root = Path(ckpt_dir)
        cursor = json.loads((root / "cursor.json").read_text())
        from stages.files import mapped

        weights = {f.name: mapped(f) for f in sorted((root / "model").glob("*.safetensors"))}  # shards or one
        self.from_trainer(self.trainer.restore.remote(weights, mapped(root / "trainer.pt")))
        self.cursor = PromptCursor.restore(self.cursor.size, self.cursor.seed, cursor)
        self.step_no = cursor["step"]
        self._next = None  # sampled by weights that are gone: its prompts are drawn again
        self.sync()
        return self.step_no

    def shutdown(self) -> None:
        self.handover().release()  # every actor of the rung, replacements included, killed once

    def survivors(self):
        """After the trainer died or hung: the stage set the rung's restart takes over (engines that still answer
        and were in no sync group with the lost trainer, `StageSet.after_trainer_death`)."""
        return self.handover().after_trainer_death(self._sync_group)


class RungFailed(RuntimeError):
    """A rung that cannot go on (its reason is one line, recorded in MLflow)."""


def train_steps(rung: Rung, first: int, last: int, should_stop: Callable[[], bool],
                on_step: Callable[[int, dict], None]) -> str:
    """The one step loop (the controller's and `ladder train-rung`'s): steps `first..last`, held-out
    evaluation every `eval.every` steps, early end on judge saturation or (`guard`) on a collapse, with the best
    weights put back; `train.max_skipped_steps` steps in a row without an update fail the rung. Returns why it
    ended: "steps", "saturation", "collapse" (`rung.ended_why` says more) or "stopped"."""
    from ladder.rung.guard import CollapseGuard

    spec = rung.spec
    approvals: list[float] = []
    skipped = 0
    fixed_label = spec.judge.mode == "solve" and bool(spec.judge.solve_steps)  # step votes: learnt once, then fixed
    guard = CollapseGuard(spec.guard.tolerance, spec.guard.window, spec.guard.consistency_rise,
                          spec.guard.consistency_drop, rewards=not fixed_label) if spec.guard.enabled else None
    if guard is not None:
        guard.after_eval(rung.last_accuracy())
        rung.keep_best()
    for step in range(first, last + 1):
        if should_stop():
            return "stopped"
        metrics = rung.step(prefetch=step != last)
        skipped = skipped + 1 if rung.last_skip else 0
        if skipped >= spec.train.max_skipped_steps:
            on_step(step, metrics)
            raise RungFailed(f"{skipped} steps in a row without an update ({rung.last_skip})")
        if step % spec.eval.every == 0 and step != last:
            metrics.update(rung.evaluate())
        on_step(step, metrics)
        approvals.append(metrics["judge/approval"])
        if saturated(approvals, spec.saturation):
            return "saturation"
        if guard is not None and collapsed(guard, rung, metrics):
            return "collapse"
    return "steps"


def collapsed(guard, rung: Rung, metrics: dict) -> bool:
    """The guard's verdict after a step: a new best is kept; on a collapse the best weights are put back."""
    verdict = guard.after_eval(metrics.get("eval/accuracy"))
    if verdict == "best":
        rung.keep_best()
    if verdict == "collapse" or guard.after_step(metrics):
        rung.ended_why = guard.reason
        rung.restore_best()
        return True
    return False
