"""The ladder chart: one PNG of two panels. First, every version on the ladder's one yardstick, beside its judge's
and rung 1's student's (does the chain climb?); then, per rung, held-out accuracy on the rung's own task (at its
start and end: in a curriculum every rung has a task of its own), judge accuracy / AUC and mean reward.

Reads `lineage_rows` dicts; matplotlib is imported inside `ladder_chart` so importing this is cheap.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

SERIES = {"held-out accuracy": "heldout_accuracy", "held-out at the rung's start": "start_accuracy",
          "judge accuracy": "judge_accuracy",
          "judge AUC": "judge_auc", "mean reward": "reward_mean",
          "its judge solves the task": "judge_task_accuracy"}
SERIES_COLORS = {"held-out accuracy": "tab:blue", "held-out at the rung's start": "tab:cyan", "judge accuracy": "tab:orange",
                 "judge AUC": "tab:green", "mean reward": "tab:purple", "its judge solves the task": "tab:brown"}
SERIES_COLORS.update({"each version": "tab:blue", "its judge": "tab:orange"})
REJECTED_COLOR = "tab:red"
LINESTYLES = ("-", "--", "-.", ":")  # series that coincide stay visible: each its own dash and a small x offset


def yardstick_points(rows: list[dict]) -> dict[str, list[tuple[int, float, str | None]]]:
    """The yardstick panel's series: every version's accuracy on the yardstick, and its judge's (the version
    promoted before it, at the rung it judged)."""
    ordered = sorted(rows, key=lambda r: (r["rung"], r["version"]))
    versions = series_points(rows, "yardstick")
    judges, champion = [], None
    for r in ordered:
        if champion is not None and r.get("yardstick") is not None:
            judges.append((r["rung"], champion, None))
        if r.get("status") == "promoted" and r.get("yardstick") is not None:
            champion = float(r["yardstick"])
    return {name: pts for name, pts in (("each version", versions), ("its judge", judges)) if pts}


def series_points(rows: list[dict], key: str) -> list[tuple[int, float, str | None]]:
    """(rung, value, status) for every row whose `key` is set, in rung then version order."""
    ordered = sorted(rows, key=lambda r: (r["rung"], r["version"]))
    return [(r["rung"], float(r[key]), r.get("status")) for r in ordered if r.get(key) is not None]


def _plot_series(ax, name: str, points: list[tuple[int, float, str | None]], index: int = 0) -> None:
    """A line through all points; promoted filled, rejected a red x, others hollow; shifted a little on x and
    dashed by `index` so a series that coincides with another stays visible."""
    dx = 0.04 * index
    xs, ys = [p[0] + dx for p in points], [p[1] for p in points]
    color = SERIES_COLORS[name]
    ax.plot(xs, ys, LINESTYLES[index % len(LINESTYLES)], color=color, linewidth=1.5, label=name)
    for x, y, status in points:
        if status == "rejected":
            ax.plot(x + dx, y, "x", color=REJECTED_COLOR, markersize=10, markeredgewidth=2.5, zorder=3)
        else:
            face = color if status == "promoted" else "white"
            ax.plot(x + dx, y, "o", color=color, markerfacecolor=face, markersize=7, zorder=3)


def _status_legend_handles():
    from matplotlib.lines import Line2D

    return [Line2D([], [], color="gray", marker="o", linestyle="", label="promoted (filled)"),
            Line2D([], [], color="gray", marker="o", markerfacecolor="white", linestyle="",
                   label="candidate (hollow)"),
            Line2D([], [], color=REJECTED_COLOR, marker="x", markeredgewidth=2.5, linestyle="",
                   label="rejected (red x)")]


def _draw(rows: list[dict], title: str):
    """The figure and the number of points per plotted series."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (yard, ax) = plt.subplots(2, 1, figsize=(8, 9), dpi=100)
    counts = _draw_yardstick(yard, rows)
    for index, (name, key) in enumerate(SERIES.items()):
        points = series_points(rows, key)
        if points:
            _plot_series(ax, name, points, index)
            counts[name] = len(points)
    ax.axhline(0.5, color="gray", linestyle="--", linewidth=1, label="chance (judge)")
    first = min(rows, key=lambda r: (r["rung"], r["version"]))
    if first.get("start_accuracy") is not None:  # the model rung 1 started from, at x = 0
        ax.plot([0], [first["start_accuracy"]], "s", color=SERIES_COLORS["held-out accuracy"], markersize=7,
                label="base model (held-out)")
    _axes(ax, rows, first.get("start_accuracy") is not None, "each rung on its own task")
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + _status_legend_handles(), loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig, counts


def _draw_yardstick(ax, rows: list[dict]) -> dict:
    """The first panel: every version on the one yardstick, its judge's, rung 1's student's and the base's."""
    counts = {}
    for index, (name, points) in enumerate(yardstick_points(rows).items()):
        _plot_series(ax, name, points, index)
        counts[f"yardstick: {name}"] = len(points)
    first = min(rows, key=lambda r: (r["rung"], r["version"]))
    if first.get("yardstick") is not None:
        ax.axhline(float(first["yardstick"]), color="tab:gray", linestyle=":", linewidth=1.2, label="rung 1's student")
    base = first.get("yardstick_start")
    if base is not None:
        ax.plot([0], [float(base)], "s", color="tab:gray", markersize=7, label="base model")
    _axes(ax, rows, base is not None, "every version on one yardstick")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
    return counts


def _axes(ax, rows: list[dict], with_base: bool, title: str) -> None:
    rungs = ([0] if with_base else []) + sorted({r["rung"] for r in rows})
    ax.set_xticks(rungs, [("base" if r == 0 else str(r)) for r in rungs])
    ax.set_xlim(rungs[0] - 0.5, rungs[-1] + 0.5)
    ax.set_ylim(0, 1)
    ax.set_xlabel("rung")
    ax.set_ylabel("accuracy" if "yardstick" in title else "value")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)


def _save_atomically(fig, out: Path) -> None:
    """Save to a temp file beside `out`, then rename, so no half-written PNG is ever left."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ladder_chart(rows: list[dict], out: str | Path, title: str = "") -> dict:
    """Write the ladder chart PNG to `out`; return {series name: points plotted}."""
    if not rows:
        raise ValueError("no rungs to plot")
    fig, counts = _draw(rows, title)
    try:
        _save_atomically(fig, Path(out))
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)
    return counts
