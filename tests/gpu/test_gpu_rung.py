"""A 2-step rung on CUDA (marked `gpu`, skipped without one): the trainer trains on the GPU, the engines run
there in bf16 (the `auto` dtype), weights sync in place, and the rung's metrics come back finite."""
import math

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_two_step_rung_on_cuda(tmp_path):
    import ray

    from ladder.models.tiny import build_tiny_model
    from ladder.rung.driver import ResolvedJudge, Rung
    from ladder.spec import parse_spec
    from ladder.tasks import build_task

    model = str(build_tiny_model(tmp_path / "tiny", size="micro", seed=0))
    spec = parse_spec({
        "name": "gpu-rung", "student": {"base": model}, "workdir": str(tmp_path / "w"),
        "judge": {"initial": {"kind": "model", "path": model}},
        "task": {"source": {"kind": "builtin", "train_size": 200}, "eval_size": 8},
        "rollout": {"group_size": 4, "max_tokens": 16, "gpu_memory_utilization": 0.2},
        "train": {"steps": 2, "prompts_per_step": 4, "lr": 1e-3},
        "resources": {"rollout": {"cpus": 1, "gpus": 0.3}, "judge": {"cpus": 1, "gpus": 0.3},
                      "trainer": {"cpus": 1, "gpus": 0.3}}})
    own = not ray.is_initialized()
    if own:
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    rung = Rung(spec, build_task(spec.task, 0), model, ResolvedJudge("model", model, model), 0)
    try:
        started = rung.ready()
        device = ray.get(rung.trainer.__ray_call__.remote(lambda self: str(self.device)))
        before = ray.get(rung.trainer.parameter_checksum.remote())
        steps = [rung.step() for _ in range(2)]
        after = ray.get(rung.trainer.parameter_checksum.remote())
    finally:
        rung.shutdown()
        if own:
            ray.shutdown()
    assert device.startswith("cuda")
    assert after != before
    for m in steps:
        assert all(math.isfinite(v) for v in m.values())
    # bf16 engines beside an fp32 trainer: the mismatch is reported, and small
    assert steps[-1]["train/logprob_mismatch"] < 0.5
    print(f"engines ready in {started:.1f}s; step {steps[-1]['time/step_s']:.2f}s "
          f"(rollout {steps[-1]['time/rollout_s']:.2f}, judge {steps[-1]['time/judge_s']:.2f}, "
          f"train {steps[-1]['time/train_s']:.2f}, sync {steps[-1]['time/sync_s']:.2f}); "
          f"logprob mismatch {steps[-1]['train/logprob_mismatch']:.4f}")
