"""Run by test_placement.py in its own process: a multi-node Ray on this machine (`ray.cluster_utils.Cluster`,
each node with its own custom resources, labels and a fake GPU count), one rung's stage actors started on it
by the spec's `resources`, and the node each actor landed on printed as JSON; then `ladder run` of a spec each of
whose roles fits a node but that asks more GPUs in total than the cluster has, and of one whose trainer no node can
host, and what each said."""
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml


def main(model: str, work: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from ladder.rung.driver import ResolvedJudge, Rung
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
    # the rollout worker and the trainer each fit the GPU node alone, the two together do not
    too_many = refused(model, cluster.address, Path(work) / "too-many-gpus", "too-many-gpus",
                       {"rollout": {"cpus": 1, "gpus": 1}, "trainer": {"cpus": 1, "gpus": 1}})
    too_big = refused(model, cluster.address, Path(work) / "too-big", "too-big", {"trainer": {"cpus": 1, "gpus": 8}})
    print(json.dumps({"landed": landed, "expected": {k: nodes[k].node_id for k in landed},
                      "reward": step["reward/mean"], "too_many_gpus": too_many, "too_big": too_big}))
    ray.shutdown()
    cluster.shutdown()


def refused(model: str, address: str, work: Path, name: str, resources: dict) -> dict:
    """`ladder run --address` of a spec asking `resources` of the cluster. Returns its exit code, stderr and
    whether anything was written to its MLflow store (under `work`, in the test's own folder)."""
    spec = {"name": name, "workdir": str(work / "w"), "student": {"base": model},
            "judge": {"initial": {"kind": "verifier", "function": "ladder.tasks.arithmetic:exact"}},
            "task": {"source": {"kind": "builtin", "train_size": 50}}, "resources": resources}
    work.mkdir(parents=True)
    (work / "spec.yaml").write_text(yaml.safe_dump(spec))
    res = subprocess.run([sys.executable, "-m", "ladder.cli", "run", str(work / "spec.yaml"), "--address", address],
                         env={**os.environ, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True, timeout=300)
    from ladder.registry.registry import Registry

    found = Registry.find(name, f"sqlite:///{work / 'w' / 'mlflow.db'}")
    return {"code": res.returncode, "stderr": res.stderr, "stored": found is not None}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
