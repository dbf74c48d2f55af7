"""How a trainer group splits a step's batch (no Ray, no world): every kept sample on exactly one rank, tokens
balanced, and every rank running the same number of passes; and the sync's bucket plan."""
from stages.train import TrainConfig
from stages.train_rank import TrainerRank, balanced_shares


def test_balanced_shares_deal_every_row_once_and_balance_tokens():
    rows = [0, 2, 3, 5, 7, 8]
    lengths = [30, 5, 29, 6, 31, 7]
    shares = balanced_shares(rows, lengths, 2)
    assert sorted(j for s in shares for j in s) == list(range(len(rows)))
    loads = [sum(lengths[j] for j in s) for s in shares]
    assert abs(loads[0] - loads[1]) <= max(lengths)  # longest first, to the lighter rank
    assert loads == [49, 59]  # 31+7+6+5 and 30+29
    assert balanced_shares(rows[:1], lengths[:1], 3) == [[0], [], []]  # fewer samples than ranks


def rank(r: int, world: int, budget: int) -> TrainerRank:
    t = TrainerRank(r, world)
    t.cfg = TrainConfig(micro_batch_tokens=budget)
    return t


def test_each_rank_runs_as_many_passes_with_its_own_samples():
    rows = [1, 4, 6, 9, 11]
    lengths = [40, 10, 38, 12, 11]
    plans = [rank(r, 2, 40).micro_groups(rows, lengths) for r in range(2)]
    assert len(plans[0]) == len(plans[1])  # FSDP's collectives need every rank in every pass
    owned = [i for plan in plans for g in plan for i in g]
    assert sorted(owned) == rows  # each kept sample trains once, on one rank
    uneven = [rank(r, 2, 40).micro_groups([1, 2, 3], [40, 30, 30]) for r in range(2)]
    assert uneven == [[[1], []], [[2], [3]]]  # rank 0's second pass adds nothing but joins the collectives
    one = rank(0, 3, 0).micro_groups([5], [9])
    idle = rank(2, 3, 0).micro_groups([5], [9])
    assert one == [[5]] and idle == [[]]  # a rank with nothing to train still joins the pass


def test_bucket_plan_keeps_order_dtype_and_cap():
    import torch

    from stages.weight_sync import plan_buckets

    weights = [("a", torch.zeros(10)), ("b", torch.zeros(10)), ("c", torch.zeros(30)), ("d", torch.zeros(2, dtype=torch.bfloat16))]
    buckets = plan_buckets(weights, cap=100)
    assert [[n for n, _ in b["items"]] for b in buckets] == [["a", "b"], ["c"], ["d"]]
    assert [b["dtype"] for b in buckets] == ["float32", "float32", "bfloat16"]
    assert buckets[1]["items"][0][1] == [30]
