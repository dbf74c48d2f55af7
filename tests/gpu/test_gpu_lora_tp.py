"""LoRA students and tensor-parallel judges on CUDA (marked `gpu`, skipped without the GPUs): a 3-step LoRA rung
whose engine takes each step's adapter in place (one GPU), and a judge engine split over two GPUs (NCCL) scoring
as a one-GPU engine does, to bf16 rounding (two GPUs)."""
import math

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def ray_gpu():
    import ray

    own = not ray.is_initialized()
    if own:
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    if own:
        ray.shutdown()


def test_a_lora_rung_on_cuda_syncs_its_adapter_in_place(ray_gpu, tmp_path):
    from ladder.models.tiny import build_tiny_model
    from ladder.rung.driver import ResolvedJudge, Rung
    from ladder.spec import parse_spec
    from ladder.tasks import build_task

    model = str(build_tiny_model(tmp_path / "tiny", size="micro", seed=0))
    verifier = "ladder.tasks.arithmetic:exact"
    spec = parse_spec({
        "name": "gpu-lora", "student": {"base": model}, "workdir": str(tmp_path / "w"),
        "judge": {"initial": {"kind": "verifier", "function": verifier}},
        "task": {"source": {"kind": "builtin", "train_size": 200}, "eval_size": 8},
        "rollout": {"group_size": 4, "max_tokens": 16, "gpu_memory_utilization": 0.3},
        "train": {"steps": 3, "prompts_per_step": 8, "lr": 1e-2, "lora": {"rank": 8, "alpha": 16, "sync": "adapter"}},
        "resources": {"rollout": {"cpus": 1, "gpus": 0.45}, "trainer": {"cpus": 1, "gpus": 0.45}}})
    rung = Rung(spec, build_task(spec.task, 0), model, ResolvedJudge("verifier", verifier, verifier), 0)
    try:
        rung.ready()
        steps = [rung.step() for _ in range(3)]
        served = ray_gpu.get(rung.rollout[0].weights_version.remote())
    finally:
        rung.shutdown()
    assert rung.lora_sync == "adapter" and served == rung.weights_version == 3
    assert all(math.isfinite(v) for m in steps for v in m.values())
    assert steps[-1]["train/logprob_mismatch"] < 0.5  # a bf16 engine beside the fp32 trainer
    last = steps[-1]
    print(f"LoRA step {last['time/step_s']:.2f}s (sync {last['time/sync_s']:.3f}s, "
          f"{last.get('sync/bytes', 0) / 2**20:.1f} MB); logprob mismatch {last['train/logprob_mismatch']:.4f}")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_a_judge_split_over_two_gpus_scores_as_one_gpu_does(ray_gpu, tmp_path):
    from ladder.judging.resolve import resolve_judge
    from ladder.models.tiny import build_tiny_model
    from ladder.rung.roles import build_judge_pool
    from ladder.spec import parse_spec
    from ladder.tasks import build_task
    from stages.actors import kill_all

    model = str(build_tiny_model(tmp_path / "nano", size="nano", seed=2))  # 2 attention heads
    prompts = [f"Q:{i % 7}+{i % 5}-1\nA:" for i in range(64)]
    responses = [f"{i % 9}+1={i % 9 + 1}#{i}" for i in range(64)]
    scores = {}
    for tp in (1, 2):
        spec = parse_spec({"name": f"gpu-tp{tp}", "student": {"base": model}, "workdir": str(tmp_path / "w"),
                           "judge": {"initial": {"kind": "model", "path": model}},
                           "task": {"source": {"kind": "builtin"}}, "judge_pool": {"tensor_parallel_size": tp},
                           "rollout": {"gpu_memory_utilization": 0.3},
                           "resources": {"judge": {"cpus": 1, "gpus": 1}}})
        pool = build_judge_pool(spec, resolve_judge(spec), build_task(spec.task, 0), 0)
        try:
            scores[tp] = pool.score_items(prompts, responses).scores
        finally:
            kill_all(pool.workers)
    assert max(scores[1]) - min(scores[1]) > 0.01
    assert scores[2] == pytest.approx(scores[1], abs=2e-2)  # bf16: NCCL sums the halves in another order
