"""Tensor-parallel engine settings: an engine of N workers asks Ray for N times its role's CPUs and GPUs on one node
(placement checks it before anything starts), and a size the model's heads cannot be split by is refused by
`validate` in one line."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.placement import over_capacity, role_resources, unplaceable
from ladder.spec import SpecError, parse_spec

ROOT = Path(__file__).resolve().parents[2]


def spec(model="m", judge="m", rungs=1, **sections):
    return parse_spec({"name": "tp", "rungs": rungs, "student": {"base": model},
                       "judge": {"initial": {"kind": "model", "path": judge}},
                       "task": {"source": {"kind": "builtin"}}, **sections})


def node(cpus, gpus=0):
    return {"Alive": True, "Resources": {"CPU": cpus, "GPU": gpus}, "Labels": {}}


def test_an_engine_of_several_workers_asks_for_each_workers_resources_on_one_node():
    s = spec(judge_pool={"tensor_parallel_size": 4, "workers": 2}, rollout={"tensor_parallel_size": 2},
             resources={"judge": {"cpus": 1, "gpus": 1, "custom": {"judge_node": 1}}, "rollout": {"cpus": 2}})
    judge, rollout = role_resources(s, "judge"), role_resources(s, "rollout")
    assert (judge.cpus, judge.gpus, judge.custom) == (4, 4, {"judge_node": 1})  # a marker resource is not scaled
    assert (rollout.cpus, rollout.gpus) == (4, 0) and role_resources(s, "trainer") == s.resources.trainer
    plain = spec(resources={"judge": {"cpus": 1, "gpus": 1}})
    assert role_resources(plain, "judge") is plain.resources.judge
    # four GPUs on one node for each judge engine: two nodes of 2 GPUs have them in total, not on one node
    tp = spec(judge_pool={"tensor_parallel_size": 4}, resources={"judge": {"gpus": 1}})
    assert unplaceable(tp, [node(8, gpus=2), node(8, gpus=2)]).startswith("resources.judge: no node of the cluster "
                                                                          "has 4 CPU, 4 GPU")
    assert unplaceable(tp, [node(8, gpus=4)]) is None
    two = spec(judge_pool={"tensor_parallel_size": 2, "workers": 2}, resources={"judge": {"gpus": 1}})
    assert "the ladder asks for 4 GPU in total (judge 2 x 2)" in over_capacity(two, [node(16, gpus=3)])


@pytest.mark.parametrize("size", [0, 65])
def test_a_tensor_parallel_size_out_of_range_is_refused(size):
    with pytest.raises(SpecError, match="judge_pool.tensor_parallel_size"):
        spec(judge_pool={"tensor_parallel_size": size})


def model_with(folder: Path, heads: int, kv_heads: int) -> str:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"num_attention_heads": heads, "num_key_value_heads": kv_heads}))
    return str(folder)


@pytest.mark.parametrize("heads, kv, tp, ok", [(4, 4, 2, True), (8, 2, 4, True), (8, 1, 2, True), (4, 2, 4, True),
                                               (3, 3, 2, False), (8, 3, 2, False), (12, 4, 6, False)])
def test_heads_that_the_workers_cannot_share_are_named(tmp_path, heads, kv, tp, ok):
    from ladder.control.preflight import unsplittable

    why = unsplittable(json.loads(Path(model_with(tmp_path / "m", heads, kv), "config.json").read_text()), tp)
    assert (why == "") == ok, why


@pytest.mark.parametrize("sections, rungs, message", [
    ({"judge_pool": {"tensor_parallel_size": 2}}, 1,
     "judge_pool.tensor_parallel_size: 2: the judge {judge} has 3 attention heads"),
    ({"rollout": {"tensor_parallel_size": 4}}, 1,
     "rollout.tensor_parallel_size: 4: the student {student} has 6 attention heads"),
    ({"judge_pool": {"tensor_parallel_size": 2}}, 2, "the student {student} (a judge from rung 2) has 3 key/value"),
])
def test_validate_refuses_a_size_the_model_cannot_be_split_by_in_one_line(tmp_path, sections, rungs, message):
    student = model_with(tmp_path / "student", 6, 3)  # 6 heads, 3 key/value heads
    judge = model_with(tmp_path / "judge", 3, 3) if rungs == 1 else model_with(tmp_path / "judge", 4, 4)
    for folder in (student, judge):  # enough of a model folder for `validate`'s file checks
        (Path(folder) / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
        (Path(folder) / "tokenizer.json").write_text("{}")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "tp", "rungs": rungs, "student": {"base": student},
                                    "judge": {"initial": {"kind": "model", "path": judge}},
                                    "task": {"source": {"kind": "builtin"}}, "workdir": str(tmp_path / "w"),
                                    **sections}))
    res = subprocess.run([sys.executable, "-m", "ladder.cli", "validate", str(path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert message.format(student=student, judge=judge) in lines[0] and "Traceback" not in res.stderr
