"""The trainer group (FSDP2 over a gloo world on CPU): an N-rank step is the 1-rank update, its sharded
checkpoints restore into 2 ranks and into 1, and a group that cannot form fails in one line naming the rank."""
import socket
import time

import pytest

from stages.batches import JudgedBatch, RolloutBatch, Sample
from stages.train import TrainConfig, Trainer
from stages.train_group import stop

# float32 on CPU: the group's sums run in another order than one process's, ~1e-7 apart after two AdamW steps;
# a learning rate 10% off moves the weights ~1e-4 apart (both measured and asserted below)
TOLERANCE = 1e-5
CFG = TrainConfig(lr=1e-3, kl_coef=0.05, micro_batch_tokens=48, max_grad_norm=0.5, weight_decay=0.01)


@pytest.fixture(scope="module")
def nano(tmp_path_factory) -> str:
    from ladder.models.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("group") / "nano", "nano", seed=1))


@pytest.fixture(scope="module")
def batch(nano) -> JudgedBatch:
    """8 samples of uneven lengths in 2 groups: several micro-batches, a share for each rank."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(nano)
    texts = [("1+2=", "3"), ("4+4=", "8 is it"), ("9-3=", "6"), ("2*3=", "six, 6"), ("7+1=", "8"),
             ("5-5=", "0 zero"), ("3*3=", "9"), ("8-1=", "7 seven!")]
    enc = lambda s: tuple(tok.encode(s, add_special_tokens=False))  # noqa: E731
    samples = tuple(Sample(enc(p), enc(c), c, ()) for p, c in texts)
    rollout = RolloutBatch(tuple(p for p, _ in texts), (None,) * 8, samples, (0, 0, 0, 0, 1, 1, 1, 1))
    return JudgedBatch(rollout, (1.0, 0.0, 0.5, 0.25, 0.0, 1.0, 0.75, 0.5))


def test_a_group_that_cannot_be_placed_says_so_in_time(ray_local, nano):
    from stages.train_group import GroupFormError, start_ranks

    t0 = time.monotonic()
    with pytest.raises(GroupFormError) as err:
        start_ranks(64, timeout_s=3)  # the test's Ray has 8 CPUs
    assert time.monotonic() - t0 < 10
    assert str(err.value).startswith("trainer group: 64 ranks of {'CPU': 1.0} (PACK) not placed within 3s")


def start_group(nano, workers: int, **kw):
    from stages.actors import spawn
    from stages.train_group import TrainerGroup

    group = spawn(TrainerGroup, nano, CFG, 0, None, workers, options={"num_cpus": 0}, timeout_s=60.0, **kw)
    import ray

    ray.get(group.__ray_ready__.remote())
    return group


def weights_of(group) -> dict:
    import ray

    return ray.get(ray.get(group.snapshot.remote()))


def max_diff(a: dict, b: dict) -> float:
    import numpy as np

    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def single_run(nano, batch, steps: int = 2, lr: float = CFG.lr):
    from dataclasses import replace

    trainer = Trainer(nano, replace(CFG, lr=lr), seed=0)
    stats = [trainer.step(batch) for _ in range(steps)]
    return trainer.state_arrays(), stats


def test_two_ranks_update_like_one(ray_local, nano, batch, record_property):
    start, single_stats = single_run(nano, batch, steps=0)[0], None
    single, single_stats = single_run(nano, batch)
    other_lr, _ = single_run(nano, batch, lr=CFG.lr * 1.1)
    group = start_group(nano, 2)
    try:
        group_stats = [ray_local.get(group.step.remote(batch)) for _ in range(2)]
        grouped = weights_of(group)
    finally:
        stop(group)
    diff, lr_diff, moved = max_diff(single, grouped), max_diff(single, other_lr), max_diff(single, start)
    record_property("group vs single max abs diff", f"{diff:.2e} (lr+10%: {lr_diff:.2e}, update: {moved:.2e})")
    print(f"2-rank vs 1-rank max |dw| {diff:.2e}; 1-rank lr*1.1 {lr_diff:.2e}; the update itself {moved:.2e}")
    assert moved > 100 * TOLERANCE  # the step moved the weights
    assert lr_diff > 5 * TOLERANCE  # the tolerance tells a changed learning rate apart
    assert diff < TOLERANCE
    for s, g in zip(single_stats, group_stats):  # the scale AdamW is blind to: the loss and the gradients' norm
        assert g.loss == pytest.approx(s.loss, rel=1e-5, abs=1e-7)
        assert g.grad_norm == pytest.approx(s.grad_norm, rel=1e-5)
        assert g.kl == pytest.approx(s.kl, rel=1e-4, abs=1e-9)
        assert g.clip_frac == pytest.approx(s.clip_frac)


def test_checkpoint_restores_into_two_ranks_and_one(ray_local, nano, batch):
    group = start_group(nano, 2)
    try:
        ray_local.get(group.step.remote(batch))
        files, state = ray_local.get([group.model_files.remote(), group.trainer_state.remote()])
        ray_local.get(group.step.remote(batch))
        expected = weights_of(group)
    finally:
        stop(group)
    assert "config.json" in files and '"Qwen2ForCausalLM"' in bytes(files["config.json"]).decode()  # not FSDPQwen2...
    files = {n: b for n, b in files.items() if n.endswith(".safetensors")}  # as `Rung.restore` passes them
    assert files
    for workers in (2, 1):
        again = start_group(nano, workers)
        try:
            assert ray_local.get(again.restore.remote(files, state)) == 1
            ray_local.get(again.step.remote(batch))
            assert max_diff(expected, weights_of(again)) < TOLERANCE, f"restored into {workers} rank(s)"
        finally:
            stop(again)


def test_group_checkpoint_missing_a_shard_is_refused_in_one_line(ray_local, nano):
    import io

    import torch

    from stages.group_checkpoint import GROUP_KEY

    group = start_group(nano, 2)
    try:
        state = ray_local.get(group.trainer_state.remote())
        saved = torch.load(io.BytesIO(state), weights_only=True)
        buf = io.BytesIO()
        torch.save({GROUP_KEY: 2, "shards": saved["shards"][:1]}, buf)
        files = {n: b for n, b in ray_local.get(group.model_files.remote()).items() if n.endswith(".safetensors")}
        with pytest.raises(Exception) as err:
            ray_local.get(group.restore.remote(files, buf.getvalue()))
        line = str(err.value).strip().splitlines()[-1]
        assert "CheckpointMismatch" in line and "ranks [0]" in line and "0..1" in line
        assert ray_local.get(group.parameter_count.remote()) > 0  # the same error on every rank: the group lives
    finally:
        stop(group)


def test_group_that_cannot_form_names_the_rank_and_cause(ray_local, nano):
    from stages.train_group import GroupFormError, form, remove_ranks, start_ranks

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        pg, ranks = start_ranks(2)
        t0 = time.monotonic()
        try:
            with pytest.raises(GroupFormError) as err:
                form(ranks, nano, CFG, port=taken.getsockname()[1], timeout_s=20)
        finally:
            remove_ranks(pg, ranks)
    assert time.monotonic() - t0 < 30
    assert str(err.value).startswith("trainer rank 0 failed") and "\n" not in str(err.value)
    assert "address already in use" in str(err.value).lower() or "in use" in str(err.value).lower()

    pg, ranks = start_ranks(2)
    ray_local.kill(ranks[1])  # a rank that dies before the world forms
    t0 = time.monotonic()
    try:
        with pytest.raises(GroupFormError) as err:
            form(ranks, nano, CFG, timeout_s=20)
    finally:
        remove_ranks(pg, ranks)
    assert time.monotonic() - t0 < 30
    assert str(err.value).startswith("trainer rank 1 failed") and "\n" not in str(err.value)


def test_a_rank_that_dies_takes_the_group_with_it(ray_local, nano, batch, wait_dead):
    """The handle's call fails as an actor's death (what the rung's restart from its checkpoint handles), the
    other rank is not left waiting in a collective, and the ranks' placement group is given back."""
    from ray.util.placement_group import placement_group_table

    live = lambda: {k for k, pg in placement_group_table().items() if pg["state"] != "REMOVED"}  # noqa: E731
    before = live()
    group = start_group(nano, 2)
    ranks = ray_local.get(group.rank_handles.remote())
    ray_local.kill(ranks[1])
    wait_dead(ranks[1])
    t0 = time.monotonic()
    with pytest.raises(ray_local.exceptions.RayActorError):
        ray_local.get(group.step.remote(batch), timeout=60)
    assert time.monotonic() - t0 < 60
    wait_dead(ranks[0])
    wait_dead(group)
    assert live() <= before
