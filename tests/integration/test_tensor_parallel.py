"""Tensor-parallel judges: a judge pool whose engines split the model over two worker processes (vLLM tensor
parallel, gloo on the CPU; `judge_pool.tensor_parallel_size: 2`) scores as a one-process pool does, takes a new
rung's judge in place through its workers' named load method, and replaces an engine that lost a worker to a
SIGKILL mid-call as it replaces a killed one-process engine. A model of 2 attention heads (the test model's 3
cannot be split in two)."""
import os
from pathlib import Path

import pytest

from conftest import sigkill_when_busy

pytestmark = pytest.mark.integration
PROMPTS = [f"Q:{i % 7}+{i % 5}-1\nA:" for i in range(48)]
RESPONSES = [f"{i % 9}+1={i % 9 + 1}#{i}" for i in range(48)]


@pytest.fixture(scope="module")
def nanos(tmp_path_factory) -> tuple[str, str]:
    """Two randomly initialised models of 2 attention heads and one architecture (the second: a new rung's)."""
    from ladder.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("tp")
    return tuple(str(build_tiny_model(root / f"nano{seed}", "nano", seed=seed)) for seed in (2, 3))


def pool_of(ray, model: str, tp: int):
    """A judge pool as a rung builds it (`build_judge_pool`), for the spec's `judge_pool.tensor_parallel_size`;
    its engines up."""
    from ladder.judging.resolve import resolve_judge
    from ladder.rung.roles import build_judge_pool
    from ladder.spec import parse_spec
    from ladder.tasks import build_task

    spec = parse_spec({"name": f"tp{tp}", "student": {"base": model}, "judge": {"initial": {"kind": "model",
                       "path": model}}, "task": {"source": {"kind": "builtin"}},
                       "judge_pool": {"tensor_parallel_size": tp, "batch_size": 16}})
    pool = build_judge_pool(spec, resolve_judge(spec), build_task(spec.task, spec.seed), spec.seed)
    ray.get([w.__ray_ready__.remote() for w in pool.workers])
    return pool


@pytest.fixture(scope="module")
def pools(ray_local, nanos):
    from stages.actors import kill_all

    one, two = pool_of(ray_local, nanos[0], 1), pool_of(ray_local, nanos[0], 2)
    yield one, two
    kill_all(one.workers + two.workers)


def engine_workers(ray, actor) -> list[int]:
    """The pids of an engine actor's tensor-parallel worker processes (named `VLLM::Worker_TP<rank>`)."""
    pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if Path(f"/proc/{c}/cmdline").read_bytes().startswith(b"VLLM::Worker_TP")]


def test_a_two_worker_judge_scores_as_one_worker_does_and_takes_a_new_judge_in_place(ray_local, pools, nanos):
    one, two = pools
    assert len(engine_workers(ray_local, two.workers[0])) == 2  # the model really is split over two processes
    before = two.score_items(PROMPTS, RESPONSES).scores
    assert max(before) - min(before) > 0.01  # graded scores: their equality below says something
    # gloo's all-reduce sums the halves in another order than one process does: equal to float32 rounding
    assert before == pytest.approx(one.score_items(PROMPTS, RESPONSES).scores, abs=1e-4)
    cfg = ray_local.get(two.workers[0].__ray_call__.remote(lambda self: self.judge))
    ray_local.get([w.load_model.remote(nanos[1], cfg) for w in (*one.workers, *two.workers)])
    after = two.score_items(PROMPTS, RESPONSES).scores
    assert after != pytest.approx(before, abs=1e-3)  # both workers took the new model
    assert after == pytest.approx(one.score_items(PROMPTS, RESPONSES).scores, abs=1e-4)


def test_an_engine_that_loses_a_worker_is_replaced_like_a_dead_one(ray_local, pools, fault_figures):
    """SIGKILL one of a two-worker engine's processes while it scores its chunk: the engine's actor ends (an engine
    short of a worker cannot serve), the pool replaces it and scores the chunk again, as for a killed
    one-process worker."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from stages.judge import JudgePool

    one, two = pools
    victim = two.workers[0]
    worker_pid = engine_workers(ray_local, victim)[1]
    prompts, responses = PROMPTS * 40, RESPONSES * 40  # one chunk that lasts far longer than the kill takes
    pool = JudgePool([victim], batch_size=len(prompts), respawn=lambda: one.workers[0])
    with ThreadPoolExecutor(1) as threads:
        scoring = threads.submit(pool.score_items, prompts, responses)
        killed = sigkill_when_busy(worker_pid, victim)  # returns once Ray reports the engine's actor dead
        scores = scoring.result(timeout=600).scores
        recovery = time.monotonic() - killed
    assert pool.replaced == 1
    assert scores == pytest.approx(one.score_items(prompts, responses).scores, abs=1e-4)
    fault_figures("tensor-parallel judge engine: one of its 2 worker processes SIGKILL mid-call",
                  f"the engine's actor ended, the pool replaced it and scored its chunk again; scores back "
                  f"{recovery:.1f} s after the kill")


@pytest.fixture(scope="module")
def rung_stages(ray_local, tmp_path_factory):
    """The trainer and two-worker rollout engine the rung tests take over in turn (an engine whose workers take
    adapters is started for the adapter case), the student loaded in place as a ladder's next rung does; and their
    one work directory (an engine is taken over only with the model cache it was started with)."""
    from ladder.rung.stageset import StageSet

    stages = StageSet()
    yield stages, tmp_path_factory.mktemp("tp-rungs")
    stages.release()


@pytest.mark.parametrize("backend, lora", [("object_store", None), ("collective", None), ("object_store", "merged"),
                                           ("object_store", "adapter")])
def test_a_rung_whose_rollout_engine_has_two_workers_samples_from_the_synced_weights(ray_local, nanos, rung_stages,
                                                                                     backend, lora):
    """`rollout.tensor_parallel_size: 2`: after each step's sync (the object store's named load, a collective
    broadcast to both workers, a LoRA student's merged weights or its adapter) the engine samples with the trainer's
    weights: the logprobs it reports for its samples equal the trainer's to float32 rounding (a worker left on old
    weights would be far off)."""
    import ray

    from ladder.judging.resolve import resolve_judge
    from ladder.rung.driver import Rung
    from ladder.spec import parse_spec
    from ladder.tasks import build_task

    stages, workdir = rung_stages
    spec = parse_spec({"name": "tp-rung", "seed": 0, "rungs": 1, "workdir": str(workdir),
                       "student": {"base": nanos[0]}, "judge": {"initial": {"kind": "task"}},
                       "task": {"source": {"kind": "builtin"}, "eval_size": 8},
                       "rollout": {"group_size": 4, "max_tokens": 16, "kv_cache_gib": 0.25, "tensor_parallel_size": 2},
                       "train": {"lr": 1e-2 if lora else 1e-3, "kl_coef": 0.0, "steps": 3, "prompts_per_step": 8,
                                 **({"lora": {"rank": 4, "alpha": 8, "sync": lora}} if lora else {})},
                       "sync": {"backend": backend}})
    rung = Rung(spec, build_task(spec.task, spec.seed), nanos[0], resolve_judge(spec), spec.seed, stages=stages)
    try:
        rung.ready()
        assert len(engine_workers(ray, rung.rollout[0])) == 2
        mismatch = [rung.step(prefetch=False)["train/logprob_mismatch"] for _ in range(3)]
        assert ray.get(rung.rollout[0].weights_version.remote()) == rung.weights_version == 3
        assert rung.lora_sync == (lora or "")
    finally:
        rung.handover()  # for the next case
    assert max(mismatch) < 1e-4, mismatch  # steps 2 and 3 sampled from weights synced after an update
