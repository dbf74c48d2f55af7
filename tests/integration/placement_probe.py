"""Run by test_placement.py in its own process: a multi-node Ray on this machine (`ray.cluster_utils.Cluster`,
each node with its own custom resources, labels and a fake GPU count), one rung's stage actors started on it
by the spec's `resources`, and the node each actor landed on printed as JSON."""
import json
import sys


def main(model: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from ladder.rung import ResolvedJudge, Rung
    from ladder.spec import parse_spec
    from ladder.tasks import build_task

    small = dict(num_cpus=2, object_store_memory=150 * 2**20)
    cluster = Cluster(initialize_head=True, head_node_args={**small, "resources": {"head": 1}})
    nodes = {"head": cluster.head_node,
             "rollout": cluster.add_node(**small, resources={"rollout_node": 1}),
             "judge": cluster.add_node(**small, labels={"tier": "judge"}),
             "trainer": cluster.add_node(**small, num_gpus=1, resources={"trainer_node": 1})}
    ray.init(address=cluster.address, namespace="ladder", log_to_driver=False)
    spec = parse_spec({
        "name": "placed", "student": {"base": model}, "judge": {"initial": {"kind": "model", "path": model}},
        "task": {"source": {"kind": "builtin", "train_size": 50}, "eval_size": 4},
        "rollout": {"kv_cache_gib": 0.25},
        "resources": {"rollout": {"cpus": 1, "custom": {"rollout_node": 1}},
                      "judge": {"cpus": 1, "node_labels": {"tier": "judge"}},
                      "trainer": {"cpus": 1, "gpus": 1}}})
    rung = Rung(spec, build_task(spec.task, 0), model, ResolvedJudge("model", model, model), 0, name_prefix="placed.j")
    try:
        rung.ready()
        where = lambda actor: ray.get(actor.__ray_call__.remote(  # noqa: E731
            lambda self: ray.get_runtime_context().get_node_id()))
        landed = {"rollout": where(rung.rollout[0]), "judge": where(rung.pool.workers[0]),
                  "trainer": where(rung.trainer)}
        step = rung.step()  # and they work together there
    finally:
        rung.shutdown()
    print(json.dumps({"landed": landed, "expected": {k: nodes[k].node_id for k in landed},
                      "reward": step["reward/mean"]}))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
