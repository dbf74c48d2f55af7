"""Collective weight sync (a stateless gloo group between the trainer group's rank 0 and a vLLM engine's worker):
after a sync the engine answers as a fresh engine loaded from the same weights does."""
from dataclasses import replace

import pytest

from stages.batches import JudgedBatch, RolloutBatch
from stages.train import TrainConfig

PROMPTS = ["1+2=", "4*4=", "9-3=", "7+8="]


@pytest.fixture(scope="module")
def nano(tmp_path_factory) -> str:
    from ladder.models.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("sync") / "nano", "nano", seed=2))


def greedy(ray, worker) -> list:
    """Each prompt's greedy completion: (token ids, their logprobs)."""
    out = ray.get(worker.generate.remote(PROMPTS, 1, 12, 0.0))
    return [(g[0].completion_ids, g[0].logprobs) for g in out]


def judged(samples) -> JudgedBatch:
    rollout = RolloutBatch(tuple(PROMPTS), (None,) * 4, tuple(samples), (0, 0, 1, 1))
    return JudgedBatch(rollout, (1.0, 0.0, 0.0, 1.0))


def test_engine_after_collective_sync_answers_like_a_fresh_one(ray_local, nano, tmp_path):
    from stages.actors import kill_all, spawn
    from stages.engine import EngineConfig
    from stages.rollout import RolloutWorker
    from stages.train_group import TrainerGroup, stop
    from stages.weight_sync import connect, push

    cfg = replace(TrainConfig(), lr=3e-2, kl_coef=0.0)
    group = spawn(TrainerGroup, nano, cfg, 0, None, 2, options={"num_cpus": 0}, timeout_s=60.0)
    worker = spawn(RolloutWorker, EngineConfig(nano, kv_cache_gib=0.1))
    fresh = None
    try:
        ray_local.get([group.__ray_ready__.remote(), worker.__ray_ready__.remote()])
        before = greedy(ray_local, worker)
        samples = [s for g in ray_local.get(worker.generate.remote(PROMPTS, 1, 12, 1.0)) for s in g]
        for _ in range(3):  # a large learning rate: the greedy answers change
            ray_local.get(group.step.remote(judged(samples)))
        assert connect(group, [worker], timeout_s=60) == 2
        assert push(group, [worker], version=7) == [7]
        after = greedy(ray_local, worker)
        saved = tmp_path / "student"
        saved.mkdir()
        for name, data in ray_local.get(group.model_files.remote()).items():
            (saved / name).write_bytes(data)
        fresh = spawn(RolloutWorker, EngineConfig(str(saved), kv_cache_gib=0.1))
        expected = greedy(ray_local, fresh)
    finally:
        stop(group)
        kill_all([w for w in (worker, fresh) if w is not None])
    assert [ids for ids, _ in after] != [ids for ids, _ in before]  # the sync changed what the engine serves
    assert [ids for ids, _ in after] == [ids for ids, _ in expected]
    for (_, lp), (_, lp_fresh) in zip(after, expected):
        assert lp == pytest.approx(lp_fresh, abs=1e-4)
