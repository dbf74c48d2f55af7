"""The paired statistics `bench/ladder_vs_oracle.py --seeds` rests its claim on (`bench/paired.py`)."""
import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("paired", Path(__file__).resolve().parents[2] / "bench" / "paired.py")
paired = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(paired)


def test_mcnemar_counts_only_the_items_where_the_versions_differ():
    a = [False] * 5 + [True] * 10 + [False] * 10
    b = [True] * 5 + [True] * 10 + [False] * 10
    m = paired.mcnemar(a, b)
    assert (m["b_only"], m["a_only"]) == (5, 0)
    assert m["p_value"] == pytest.approx(2 / 2 ** 5)  # exact: both tails of Binomial(5, 1/2) at 0 and 5
    assert m["difference"] == pytest.approx(5 / 25)
    assert paired.mcnemar(b, a)["p_value"] == m["p_value"]
    assert paired.mcnemar(a, a)["p_value"] == 1.0


def test_chain_share_pools_the_seeds_and_keeps_each_items_versions_paired():
    # seed 1: the judged chain gains half the oracle's 40 points; seed 2: all of the oracle's 20
    s1 = {"first": [False] * 60 + [True] * 40, "judged": [True] * 20 + [False] * 40 + [True] * 40,
          "oracle": [True] * 40 + [False] * 20 + [True] * 40}
    s2 = {"first": [False] * 20 + [True] * 80, "judged": [True] * 20 + [True] * 80,
          "oracle": [True] * 20 + [True] * 80}
    out = paired.chain_share([s1, s2], draws=400)
    assert out["per_seed"] == pytest.approx([0.5, 1.0])
    assert out["share"] == pytest.approx((40 / 200) / (60 / 200))  # pooled gains, not the mean of the shares
    assert out["ci95"][0] < out["share"] < out["ci95"][1] and out["items"] == 200
    # items resampled with their three versions together: a chain that equals the oracle on every item has share 1
    same = paired.chain_share([{**s1, "judged": s1["oracle"]}], draws=200)
    assert same["ci95"] == pytest.approx([1.0, 1.0]) and same["p_share_below_half"] == 0.0
