"""The ladder chart: a real PNG, one point per rung and series, empty ladders refused."""
from __future__ import annotations

import struct

import pytest

from ladder.registry.chart import ladder_chart

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def three_rungs() -> list[dict]:
    """Rung 0 promoted, rung 1 rejected, rung 2 a candidate; some values missing, AUC never set."""
    return [
        {"version": 1, "rung": 0, "status": "promoted", "heldout_accuracy": 0.42,
         "judge_accuracy": None, "judge_auc": None, "reward_mean": None},
        {"version": 2, "rung": 1, "status": "rejected", "heldout_accuracy": 0.38,
         "judge_accuracy": 0.61, "judge_auc": None, "reward_mean": 0.30},
        {"version": 3, "rung": 2, "status": "candidate", "heldout_accuracy": 0.55, "start_accuracy": 0.31,
         "judge_accuracy": 0.66, "reward_mean": 0.47},
    ]


def test_chart_writes_png_with_one_point_per_rung(tmp_path):
    rows = three_rungs()
    out = tmp_path / "charts" / "ladder.png"
    counts = ladder_chart(rows, out, title="ladder test")
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 1000
    # a curriculum rung's start on its own task is plotted beside its end
    expected = {"held-out accuracy": 3, "held-out at the rung's start": 1, "judge accuracy": 2, "mean reward": 2}
    assert counts == expected
    for name, key in [("held-out accuracy", "heldout_accuracy"), ("judge accuracy", "judge_accuracy"),
                      ("mean reward", "reward_mean")]:
        assert counts[name] == sum(r.get(key) is not None for r in rows)
    assert "judge AUC" not in counts
    assert [p.name for p in out.parent.iterdir()] == ["ladder.png"]


def test_chart_pixel_size_is_sensible(tmp_path):
    out = tmp_path / "ladder.png"
    ladder_chart(three_rungs(), out)
    width, height = struct.unpack(">II", out.read_bytes()[16:24])
    assert width > 200 and height > 200


def test_chart_refuses_empty_rows(tmp_path):
    with pytest.raises(ValueError, match="no rungs to plot"):
        ladder_chart([], tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()
