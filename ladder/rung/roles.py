"""How a rung's stage actors are configured and started, in one place (`start_roles`): the trainer, the rollout
workers and the judge pool (a verifier, or judge workers), their engine settings, where models are fetched, and the
chat renderers and context lengths of the student and the judge."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from cluster.placement import role_resources
from ladder.progress import TASK_CHECKER, ResolvedJudge
from ladder.tasks.base import Task
from stages.models import check_model_dir


def model_store(spec):
    """Where stage actors fetch `models:/` locations: the ladder's MLflow, cached under its work directory."""
    from ladder.registry.store import tracking_uri_for
    from stages.models import ModelStore

    return ModelStore(tracking_uri_for(spec), str(Path(spec.workdir).resolve() / spec.name / "model-cache"))


def engine_config(spec, model: str, seed: int, max_model_len: int = 512, lora_rank: int = 0, tp: int = 0):
    """An engine's settings from the spec's rollout section; `tp` its tensor-parallel size (0: the rollout's)."""
    from stages.engine import EngineConfig

    ro = spec.rollout
    return EngineConfig(model, seed=seed, kv_cache_gib=ro.kv_cache_gib, max_model_len=max_model_len, dtype=ro.dtype,
                        compiled=ro.compiled, gpu_memory_utilization=ro.gpu_memory_utilization,
                        store=model_store(spec), trust_remote_code=spec.trust_remote_code, lora_rank=lora_rank,
                        tensor_parallel_size=tp or ro.tensor_parallel_size)


def lora_sync(spec, student_path: str) -> tuple[str, str]:
    """How a LoRA rung's rollout engines get the student after each step, and why: ("adapter", "") the adapter
    alone, into engines that keep the base; ("merged", why) the merged weights, where `train.lora.sync` says so or
    (auto) the engines cannot take the adapter; ("", "") for a rung that is not LoRA."""
    from stages.lora import engine_refusal, linear_modules

    lora = spec.train.lora
    if lora is None:
        return "", ""
    if lora.sync == "merged":
        return "merged", "train.lora.sync is merged"
    why = engine_refusal(linear_modules(model_store(spec).local(student_path)), lora.target_modules)
    if why and lora.sync == "adapter":
        raise ValueError(f"train.lora.sync: adapter: a vLLM engine cannot take {why}; use sync: merged or auto")
    return ("merged", f"a vLLM engine cannot take {why}") if why else ("adapter", "")


def model_prompts(spec, location: str, chat_spec, field: str):
    """The chat renderer of the model at `location` (its tokenizer, `chat_spec`) and the model's context limit. Its
    files are checked here, before any stage actor starts: a broken one (a version promoted by hand, copied short)
    fails the rung at once, in one line naming the file."""
    from ladder.rung.prompts import load_tokenizer, model_limit, renderer

    store = model_store(spec)
    check_model_dir(store.local(location))
    chat = renderer(load_tokenizer(location, store, spec.trust_remote_code), chat_spec, field)
    return chat, model_limit(location, store)


def student_prompts(spec, task, location: str):
    """The student's chat renderer and its engines' context length (the rendered prompts measured)."""
    from ladder.rung.prompts import student_context

    chat, limit = model_prompts(spec, location, spec.student.chat, "student.chat")
    return chat, student_context(spec, task, chat, limit)


def judge_prompts(spec, cfg, task, location: str):
    """The judge's chat renderer and its engines' context length, in `cfg`'s mode."""
    from ladder.rung.prompts import judge_context
    from stages.judge import verdict_token_ids

    chat, limit = model_prompts(spec, location, spec.judge.chat, "judge.chat")
    verdict_token_ids(chat.tokenizer, cfg)  # a verdict word that is not one token: one line, before any engine
    return chat, judge_context(spec, cfg, task, chat, limit)


def actor_name(prefix: Optional[str], role: str) -> Optional[str]:
    """`<ladder>.<job>.<role>.<random>`: stage actors carry their ladder's name (never reused)."""
    import uuid

    return f"{prefix}.{role}.{uuid.uuid4().hex[:6]}" if prefix else None


@dataclass
class RungRoles:
    """The three roles of a rung, started (or taken over from the previous rung's `StageSet`)."""
    chat: object             # the student's chat renderer (what the rollout workers are prompted with)
    pool: object             # the JudgePool: a verifier, or judge workers
    trainer: object          # the Trainer actor
    rollout: list            # the RolloutWorker actors
    start_rollout: Callable  # i -> a new rollout worker i (a dead one's replacement)
    lora_sync: tuple = ("", "")  # (a LoRA rung) what the rollout engines receive, and why (`lora_sync`)


def start_roles(spec, task: Task, student_path: str, judge: ResolvedJudge, seed: int, name_prefix: Optional[str],
                stages) -> RungRoles:
    """Every stage actor of a rung, from `stages` where its settings allow (the model loaded in place), else new.
    Prompts that cannot be rendered or cannot fit are refused first, before any actor starts."""
    from ladder.rung.stageset import settings_key
    from stages.actors import spawn
    from stages.rollout import RolloutWorker
    from stages.train import TrainConfig

    res = spec.resources
    stages.reused = stages.started = 0
    chat, context = student_prompts(spec, task, student_path)
    sync = lora_sync(spec, student_path)
    rank = spec.train.lora.rank if sync[0] == "adapter" else 0  # engines that take adapters of this rank
    pool = build_judge_pool(spec, judge, task, seed, name_prefix, stages)
    train_cfg = TrainConfig.from_spec(spec.train, spec.trust_remote_code)
    trainer = stages.take("trainer", settings_key(res.trainer, spec.trust_remote_code, spec.train.workers,
                                                  spec.train.placement_strategy), 1,
                          lambda t: t.reset.remote(student_path, train_cfg, seed),
                          lambda i=0: start_trainer(spec, student_path, train_cfg, seed, name_prefix, stages),
                          res.step_timeout_s)[0]
    rollout_res = role_resources(spec, "rollout")
    start_rollout = lambda i: spawn(  # noqa: E731
        RolloutWorker, engine_config(spec, student_path, seed + i, context, rank), resources=rollout_res,
        name=actor_name(name_prefix, f"rollout{i}"), namespace="ladder")
    key = settings_key(engine_config(spec, student_path, seed, context, rank), rollout_res)
    rollout = list(stages.take("rollout", key, spec.rollout.workers, lambda w: w.load_model.remote(student_path),
                               start_rollout, res.step_timeout_s))
    return RungRoles(chat, pool, trainer, rollout, start_rollout, sync)


def start_trainer(spec, student_path: str, train_cfg, seed: int, name_prefix: Optional[str], stages):
    """The trainer: one `Trainer` actor, or with `train.workers: N` a `TrainerGroup` (an actor of no CPU of its own
    over N ranks in one placement group, each rank `resources.trainer`), behind the same methods."""
    from stages.actors import spawn

    res, name = spec.resources, actor_name(name_prefix, "trainer")
    if spec.train.workers == 1:
        from stages.train import Trainer

        return spawn(Trainer, student_path, train_cfg, seed, model_store(spec), resources=res.trainer, name=name,
                     namespace="ladder")
    from stages.train_group import TrainerGroup, reserve

    # the ranks' placement group is reserved here, held by the stage set's guard: `stop --now` kills the group's
    # actor (its ranks die with it) and gives the placement group back, which a killed actor cannot do
    pg = stages.guard.hold(reserve(spec.train.workers, res.trainer, spec.train.placement_strategy))
    group = spawn(TrainerGroup, student_path, train_cfg, seed, model_store(spec), spec.train.workers,
                  rank_resources=res.trainer, strategy=spec.train.placement_strategy, timeout_s=res.placement_timeout_s,
                  pg=pg, options={"num_cpus": 0}, name=name, namespace="ladder")
    stages.groups[group] = pg  # ended with `train_group.stop` (its ranks' placement group given back)
    return group


def build_judge_pool(spec, judge: ResolvedJudge, task: Task, seed: int, name_prefix: Optional[str] = None,
                     stages=None):
    """A `JudgePool` for `judge` in `spec.judge`'s mode: a verifier (a function, or the task's own checker), or
    judge workers (one engine each), taken over from `stages` (a `StageSet`) with the judge loaded in place when
    they can be."""
    from ladder.rung.stageset import StageSet, settings_key
    from stages.actors import spawn, wait_ready
    from stages.judge import JudgeConfig, JudgePool, JudgeWorker

    stages = stages if stages is not None else StageSet()
    if judge.kind == "verifier":
        return verifier_pool(spec, verifier_of(judge, task), name_prefix, stages, exact_steps(spec, judge, task))
    stages.drop("verifier")
    cfg = JudgeConfig.from_spec(spec.judge, task.answer_pattern)
    chat, context = judge_prompts(spec, cfg, task, judge.location)
    engine = engine_config(spec, judge.location, seed, context, tp=spec.judge_pool.tensor_parallel_size)
    res = role_resources(spec, "judge")
    start = lambda i=0: spawn(JudgeWorker, engine, cfg, resources=res,  # noqa: E731
                              name=actor_name(name_prefix, "judge"), namespace="ladder")

    def started(actor):  # a replacement, used at once: placed and up, or a one-line failure
        wait_ready([("judge", actor, res)], spec.resources.placement_timeout_s,
                   spec.resources.step_timeout_s)
        return actor

    workers = stages.take("judges", settings_key(engine, res), spec.judge_pool.workers,
                          lambda w: w.load_model.remote(judge.location, cfg), start, spec.resources.step_timeout_s)
    return JudgePool(workers, spec.judge_pool.batch_size, respawn=lambda: started(stages.start(start)), cfg=cfg,
                     max_replacements=spec.worker_replacements, chat=chat.user,
                     timeout_s=spec.resources.step_timeout_s, views=task.views, steps=task.steps,
                     step_prompts=step_prompts(task, cfg.settings, spec.seed),
                     tables=(stages.step_tables, judge.location))


def step_prompts(task: Task, settings, seed: int) -> tuple[str, ...]:
    """The training prompts the judge's step table is learnt from (`judge.solve_steps` of them, drawn by the ladder's
    seed, so the gate and the next rung draw the same); none when the table is not asked for."""
    n = getattr(settings, "solve_steps", 0)
    return tuple(e.prompt for e in random.Random(seed).sample(task.train, min(n, len(task.train)))) if n else ()


def exact_steps(spec, judge: ResolvedJudge, task: Task):
    """The task's own steps when its checker judges with step votes (`kind: task`, solve mode, `solve_steps`) and it
    works them exactly (the built-in arithmetic): the student then learns the prompt's exact worked answer where a
    model judge's table would give its composed one (`solve_distill`, `solve_guide`), step votes' oracle; else None."""
    settings = spec.judge
    if judge.location != TASK_CHECKER or settings.mode != "solve" or not settings.solve_steps:
        return None
    return task.steps if task.steps is not None and task.steps.exact is not None else None


def verifier_pool(spec, verifier, name_prefix: Optional[str], stages, steps=None):
    """A pool that runs `verifier` on a `VerifierWorker` (an actor of no CPU of its own and no engine), taken over
    from `stages` where one runs: a verifier that hangs is timed out (`resources.step_timeout_s`) and replaced like
    a judge worker, and `stop --now` kills it with the rest. With the task's `steps` (`exact_steps`) its training
    batches also get the prompts' exact worked answers as guides."""
    from stages.actors import spawn
    from stages.judge import JudgeConfig, JudgePool, VerifierWorker

    stages.drop("judges")
    start = lambda i=0: spawn(VerifierWorker, verifier, options={"num_cpus": 0},  # noqa: E731
                              name=actor_name(name_prefix, "verifier"), namespace="ladder")
    workers = stages.take("verifier", "verifier", 1, lambda w: w.set_verifier.remote(verifier), start,
                          spec.resources.step_timeout_s)
    cfg = JudgeConfig.from_spec(spec.judge) if steps is not None else None
    return JudgePool(workers, spec.judge_pool.batch_size, verifier=verifier, cfg=cfg, steps=steps,
                     respawn=lambda: stages.start(start), max_replacements=spec.worker_replacements,
                     timeout_s=spec.resources.step_timeout_s)


def verifier_of(judge: ResolvedJudge, task: Task):
    """The function a verifier judge scores with: an imported `module:function`, or the task's own checker."""
    from stages.judge import JudgeError, load_verifier

    if judge.location != TASK_CHECKER:
        return load_verifier(judge.location)
    if task.verifier is None:
        raise JudgeError(f"judge.initial: kind task needs reference answers, and task {task.name}'s rows have none")
    return task.verifier
