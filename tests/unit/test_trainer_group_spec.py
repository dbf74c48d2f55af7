"""A trainer group and collective weight sync as the spec asks for them: bounds, and the placement check of a
group's ranks before anything starts (one line naming the field and what is missing)."""
from __future__ import annotations

import pytest

from ladder.spec import SpecError, parse_spec


def spec(**fields):
    return parse_spec({"name": "grp", "student": {"base": "m"}, "judge": {"initial": {"kind": "task"}},
                       "task": {"source": {"kind": "builtin"}}, **fields})


def node(cpus: float, gpus: float = 0) -> dict:
    return {"Alive": True, "Resources": {"CPU": cpus, "GPU": gpus}}


def test_group_sizes_and_sync_backends_are_validated():
    assert spec().train.workers == 1 and spec().sync.backend == "object_store"
    assert spec(train={"workers": 8}, sync={"backend": "collective"}).train.workers == 8
    for bad, field in (({"train": {"workers": 0}}, "train.workers"), ({"sync": {"backend": "nccl"}}, "sync.backend"),
                       ({"train": {"placement_strategy": "ANYWHERE"}}, "train.placement_strategy")):
        with pytest.raises(SpecError, match=field):
            parse_spec_or_raise(bad)


def parse_spec_or_raise(fields: dict):
    from pydantic import ValidationError

    from ladder.spec.ladder import format_validation_error

    try:
        return spec(**fields)
    except ValidationError as err:
        raise SpecError(format_validation_error(err)) from None


def test_every_rank_of_a_group_counts_in_what_the_ladder_asks():
    from cluster.placement import over_capacity

    eight = spec(train={"workers": 8}, resources={"trainer": {"gpus": 1}})
    assert over_capacity(eight, [node(16, gpus=4)]) == (
        "resources: the ladder asks for 8 GPU in total (trainer 8 x 1); the cluster has 4 GPU on 1 live node")
    assert over_capacity(eight, [node(16, gpus=4), node(16, gpus=4)]) is None


def test_a_group_strategy_the_nodes_cannot_meet_is_refused_in_one_line():
    from cluster.placement import unplaceable

    packed = spec(train={"workers": 4, "placement_strategy": "STRICT_PACK"}, resources={"trainer": {"gpus": 1}})
    two_by_two = [node(8, gpus=2), node(8, gpus=2)]
    assert unplaceable(packed, two_by_two) == ("train.workers: 4 ranks with STRICT_PACK need one node with 4 CPU "
                                               "and 4 GPU (resources.trainer per rank); no live node has it")
    assert unplaceable(packed, [node(8, gpus=4)]) is None
    spread = spec(train={"workers": 3, "placement_strategy": "STRICT_SPREAD"}, resources={"trainer": {"gpus": 1}})
    assert unplaceable(spread, two_by_two) == ("train.workers: 3 ranks with STRICT_SPREAD need 3 nodes that each "
                                               "fit resources.trainer; 2 of the 2 live nodes do")
    assert unplaceable(spread, two_by_two + [node(8, gpus=1)]) is None
    assert unplaceable(spec(train={"workers": 4}, resources={"trainer": {"gpus": 1}}), two_by_two) is None  # PACK


def test_the_8b_example_fits_one_8_gpu_node_and_no_fewer():
    """examples/scale-8b.yaml (README "Scaling up"): 4 trainer ranks, 2 rollout and 2 judge engines, a GPU each."""
    from pathlib import Path

    from cluster.placement import over_capacity, unplaceable
    from ladder.spec import load_spec

    big = load_spec(Path(__file__).resolve().parents[2] / "examples" / "scale-8b.yaml")
    assert big.train.workers == 4 and big.sync.backend == "collective"
    assert unplaceable(big, [node(64, gpus=8)]) is None and over_capacity(big, [node(64, gpus=8)]) is None
    assert "asks for 8 GPU in total" in over_capacity(big, [node(64, gpus=7)])
    assert unplaceable(big, [node(64, gpus=2), node(64, gpus=2), node(64, gpus=4)]) is None  # 4 ranks on one node
    assert "STRICT_PACK" in unplaceable(big, [node(64, gpus=3)] * 3)
