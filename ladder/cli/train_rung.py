"""`ladder train-rung`: one rung against the spec's initial judge, printing per-step metrics.

The ladder controller runs the same `Rung` and the same step loop (`train_steps`: evaluation cadence,
saturation, stop); this module is the standalone, single-rung path.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from ladder.control.preflight import preflight
from ladder.rung.driver import Rung, train_steps


def format_step(step: int, total: int, m: dict) -> str:
    return (f"step {step}/{total}  reward {m['reward/mean']:.3f}±{m['reward/std']:.3f}  "
            f"kl {m['train/kl']:.4f}  loss {m['train/loss']:+.4f}  {m['rollout/tokens_per_s']:.0f} tok/s  "
            f"[rollout {m['time/rollout_s']:.2f}s judge {m['time/judge_s']:.2f}s "
            f"train {m['time/train_s']:.2f}s sync {m['time/sync_s']:.2f}s]")


def run_single_rung(spec, steps: Optional[int] = None, out: Optional[Path] = None,
                    as_json: bool = False, verbose: bool = False) -> dict:
    from cluster.connect import start_ray
    from ladder.tasks import build_task

    total = steps or spec.train.steps
    task = build_task(spec.task, spec.seed)
    judge = preflight(spec, gate=False)
    start_ray(spec, verbose)
    emit = (lambda obj: print(json.dumps(obj), flush=True)) if as_json else (lambda obj: None)
    say = (lambda s: None) if as_json else (lambda s: print(s, flush=True))
    t0 = time.perf_counter()
    rung = Rung(spec, task, spec.student.base, judge, spec.seed)
    try:
        started = rung.ready()
        say(f"engines ready in {started:.1f}s (judge: {judge.label})")
        before = rung.evaluate()
        say("eval before: " + ", ".join(f"{k} {v:.3f}" for k, v in before.items()))
        history = []

        def on_step(i: int, m: dict) -> None:
            history.append(m)
            emit({"step": i, **m})
            say(format_step(i, total, m))

        ended = train_steps(rung, 1, total, lambda: False, on_step)
        if ended != "steps":
            say(f"rung ended early: {rung.ended_why or ended}")
        after = rung.evaluate()
        say("eval after:  " + ", ".join(f"{k} {v:.3f}" for k, v in after.items()))
        saved = rung.save_student(str(out or Path(spec.workdir) / spec.name / "train-rung" / "student"))
        summary = {"engine_start_s": started, "steps": total, "seconds": time.perf_counter() - t0,
                   "eval_before": before, "eval_after": after, "saved": saved,
                   "mean_step": {k: sum(h[k] for h in history if k in h) / sum(k in h for h in history) for k in history[0]}}
        emit({"summary": summary})
        say(f"saved student to {saved}")
        return summary
    finally:
        rung.shutdown()
