"""The trainer group and the collective weight sync on CUDA (marked `gpu`; skipped without 3 GPUs): a 3-step rung
with `train.workers: 2` (FSDP2 over NCCL, a GPU per rank) and `sync.backend: collective` (NCCL broadcast to an
engine on a GPU of its own), its metrics finite and its engine serving the trainer's weights. NCCL takes one rank
per device: a trainer rank and an engine that share a GPU cannot be in one NCCL group (use `object_store` there)."""
import math

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 3,
                                                  reason="needs 3 CUDA GPUs")]


def test_a_two_rank_rung_with_nccl_sync(tmp_path):
    import ray

    from ladder.models.tiny import build_tiny_model
    from ladder.rung.driver import ResolvedJudge, Rung
    from ladder.spec import parse_spec
    from ladder.tasks import build_task

    model = str(build_tiny_model(tmp_path / "tiny", size="micro", seed=0))
    verifier = "ladder.tasks.arithmetic:exact"
    spec = parse_spec({
        "name": "gpu-group", "student": {"base": model}, "workdir": str(tmp_path / "w"),
        "judge": {"initial": {"kind": "verifier", "function": verifier}},
        "task": {"source": {"kind": "builtin", "train_size": 200}, "eval_size": 8},
        "rollout": {"group_size": 4, "max_tokens": 16, "gpu_memory_utilization": 0.3},
        "train": {"steps": 3, "prompts_per_step": 8, "lr": 1e-3, "workers": 2}, "sync": {"backend": "collective"},
        "resources": {"rollout": {"cpus": 1, "gpus": 1}, "trainer": {"cpus": 1, "gpus": 1}}})
    own = not ray.is_initialized()
    if own:
        ray.init(address="local", num_cpus=6, include_dashboard=False, log_to_driver=False)
    rung = Rung(spec, build_task(spec.task, 0), model, ResolvedJudge("verifier", verifier, verifier), 0)
    try:
        started = rung.ready()
        steps = [rung.step() for _ in range(3)]
        served = ray.get(rung.rollout[0].weights_version.remote())
    finally:
        rung.shutdown()
        if own:
            ray.shutdown()
    assert served == rung.weights_version == 3
    for m in steps:
        assert all(math.isfinite(v) for v in m.values())
    assert steps[-1]["train/logprob_mismatch"] < 0.5  # bf16 engine beside the fp32 trainer's weights
    print(f"engines ready in {started:.1f}s; step {steps[-1]['time/step_s']:.2f}s (train {steps[-1]['time/train_s']:.2f}"
          f", sync {steps[-1]['time/sync_s']:.2f}); logprob mismatch {steps[-1]['train/logprob_mismatch']:.4f}")
