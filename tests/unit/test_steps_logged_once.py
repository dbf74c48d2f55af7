"""Each step of a rung is logged once: a step redone after a restart from a checkpoint, by the same controller
(a stage actor died) or by a restarted one, keeps what its first run logged. Real MLflow on SQLite, no Ray."""
from ladder.registry.registry import Registry


def run_steps(reg, run_id: str, steps: range, reward: float) -> None:
    """What the train phase does at each step: claim it, and log its metrics if the claim is new."""
    for step in steps:
        if reg.claim_step(run_id, step):
            reg.log_metrics(run_id, {"reward/mean": reward, "train/loss": 1.0}, step)


def test_steps_redone_after_a_restart_are_logged_once(registry, mlflow_store):
    registry.buffer_writes()  # as the controller logs: through the outbox, delivered in the background
    run_id = registry.client.create_run(registry.experiment_id).info.run_id
    run_steps(registry, run_id, range(1, 7), 0.1)  # steps 1-6, a checkpoint at 4, then a stage dies
    run_steps(registry, run_id, range(5, 9), 0.2)  # the same controller redoes 5-6 from that checkpoint
    registry.flush_writes()
    restarted = Registry(registry.name, *mlflow_store)  # a controller Ray restarted, a process of its own
    run_steps(restarted, run_id, range(7, 11), 0.3)  # redoes 7-8 from a checkpoint at 6
    logged = sorted((m.step, m.value) for m in registry.client.get_metric_history(run_id, "reward.mean"))
    assert logged == [(s, 0.1) for s in range(1, 7)] + [(7, 0.2), (8, 0.2), (9, 0.3), (10, 0.3)]
    assert len(registry.client.get_metric_history(run_id, "train.loss")) == 10
