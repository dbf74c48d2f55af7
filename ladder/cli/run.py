"""`ladder run`: start the controller actor, show progress, print the lineage table at the end."""
from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Optional


def format_table(rows: list[dict], aliases: dict[str, str]) -> str:
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    head = (f"{'version':>7}  {'rung':>4}  {'judged by':<24} {'mode':<8} {'status':<9} {'held-out acc':>14} "
            f"{'judge acc':>9} {'judge AUC':>9} {'reward':>6}  aliases")
    lines = [head, "-" * len(head)]
    for r in rows:
        names = ",".join(sorted(a for a, v in aliases.items() if v == str(r["version"])))
        lines.append(f"{r['version']:>7}  {r['rung']:>4}  {str(r['judged_by'])[-24:]:<24} {str(r['judge_mode'])[:8]:<8} "
                     f"{str(r['status']):<9} {_from_to(r.get('start_accuracy'), r['heldout_accuracy']):>14} {fmt(r['judge_accuracy']):>9} "
                     f"{fmt(r['judge_auc']):>9} {fmt(r['reward_mean']):>6}  {names}")
        lines.append(f"{'':>15}task: {r['task'] or '-'}{_judge_solves(r)};  gate: {r['reason'] or '-'}")
        lines.append(f"{'':>15}climb: yardstick {_from_to(r.get('yardstick_start'), r.get('yardstick'))}, "
                     f"beats its judge by {_signed(r.get('beats_judge'))} on its task, ended by {r.get('ended_by') or '-'}")
        lines.append(f"{'':>15}health: length {fmt(r['response_tokens'])} tok, length~reward r={fmt(r['length_reward_corr'])}, "
                     f"approval {fmt(r['approval'])}, identical {fmt(r['identical_share'])}, "
                     f"parse failures {fmt(r['parse_failure_rate'])}, judge tok/sample {fmt(r['judge_tokens_per_sample'])}")
        if r.get("reward_accuracy") is not None:
            lines.append(f"{'':>15}truth: reward accuracy {fmt(r['reward_accuracy'])}, right samples "
                         f"{fmt(r['sample_accuracy'])}, held-out flips right->wrong {fmt(r.get('flip_rate'))}, "
                         f"answer consistency {fmt(r.get('answer_consistency'))}")
    return "\n".join(lines)


def _signed(x) -> str:
    return "-" if x is None else f"{x:+.3f}"


def _judge_solves(r: dict) -> str:
    """`, its judge solves 0.500 (majority 0.625)`: the rung's judge at the rung's own task."""
    if r.get("judge_task_accuracy") is None:
        return ""
    majority = r.get("judge_majority_accuracy")
    return (f", its judge solves {r['judge_task_accuracy']:.3f}"
            + ("" if majority is None else f" (majority {majority:.3f})"))


def _from_to(start, end) -> str:
    """`0.227->0.477`: held-out accuracy before and after the rung's training."""
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    return fmt(end) if start is None else f"{fmt(start)}->{fmt(end)}"


class Terminated(Exception):
    """SIGTERM (as `ray job stop` sends it to a submitted ladder's driver)."""


TERMINATED, INTERRUPTED = threading.Event(), threading.Event()


def _on_signal(signum, frame):
    """Only note it: raising here, inside one of Ray's C calls, would corrupt that call."""
    (TERMINATED if signum == signal.SIGTERM else INTERRUPTED).set()


def claim_name(spec, poll_s: float = 0.5, timeout_s: float = 120.0) -> None:
    """Refuse, in one line, a ladder whose controller is alive and working; clear one that only lingers."""
    import ray

    try:
        old = ray.get_actor(spec.name, namespace="ladder")
    except ValueError:
        return
    try:
        status = ray.get(old.status.remote(), timeout=30)
    except Exception:
        status = {"state": "failed"}
    if status["state"] in ("pending", "running", "awaiting_promotion", "stopping"):
        raise ValueError(f"ladder {spec.name!r} is already running (job {status.get('job')}, {status['state']}); "
                         f"see `ladder status {spec.name}` or stop it with `ladder stop {spec.name}`")
    ray.kill(old)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(spec.name, namespace="ladder")
        except ValueError:
            return
        time.sleep(poll_s)


def run_ladder(spec, as_json: bool = False, verbose: bool = False, poll_s: float = 2.0,
               address: Optional[str] = None, job: Optional[str] = None, resume: bool = False,
               submission: Optional[str] = None) -> dict:
    """Start (or resume) the ladder's controller, follow it, and print the lineage at the end.

    Ctrl-C asks for a graceful stop and waits for it; SIGTERM (`ray job stop`) asks for it and leaves: the
    detached controller finishes the step, checkpoints, stops its stage actors, and ends itself.
    """
    import ray

    from ladder.control.controller import start_controller
    from ladder.registry.registry import Registry
    from cluster.connect import start_ray

    from ladder.control.lease import LeaseHeld, refuse_if_running

    refuse_if_running(spec)  # another controller of this ladder runs now (anywhere, any Ray): one line
    start_ray(spec, verbose, address)
    claim_name(spec)
    controller = start_controller(spec, job, resume, submission)
    done = controller.run.remote()
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:
        _follow(controller, done, as_json, poll_s)
    except KeyboardInterrupt:
        ray.get(controller.stop.remote())
        print("stopping: finishing the current step and checkpointing ...", flush=True)
        ray.get(done)
    except Terminated:
        ray.get(controller.stop.remote(), timeout=2)
        print("terminated: the ladder finishes its step, checkpoints and stops", flush=True)
        raise SystemExit(143)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    final = ray.get(done)
    ray.kill(controller)
    refused = f"{LeaseHeld.__name__}: "
    if final["state"] == "failed" and (final["error"] or "").startswith(refused):
        # another controller took the lease as this one started (`run` of one ladder at once, anywhere): one line
        raise LeaseHeld(final["error"].removeprefix(refused))
    registry = Registry.for_spec(spec)
    rows = registry.lineage()
    if as_json:
        print(json.dumps({"status": final, "lineage": rows}))
    else:
        _print_summary(spec, final, rows, registry)
    return final


def _follow(controller, done, as_json: bool, poll_s: float) -> None:
    """Print progress lines until the controller's run ends; a SIGTERM is acted on within half a second
    (`ray job stop` waits 3 s before it kills the driver)."""
    import ray

    last, next_poll = None, 0.0
    while True:
        ready, _ = ray.wait([done], timeout=0.5)
        if TERMINATED.is_set():
            raise Terminated()
        if INTERRUPTED.is_set():
            INTERRUPTED.clear()
            raise KeyboardInterrupt
        if not ready and time.monotonic() < next_poll:
            continue
        next_poll = time.monotonic() + poll_s
        status = ray.get(controller.status.remote())
        line = _progress(status)
        if line != last:
            print(json.dumps({k: status[k] for k in ("state", "phase", "rung", "step", "latest")}) if as_json
                  else line, flush=True)
            last = line
        if ready:
            return


def _print_summary(spec, final: dict, rows: list[dict], registry) -> None:
    from ladder.registry.store import tracking_uri_for

    print(format_table(rows, registry.aliases()))
    print(f"\nstate: {final['state']}" + (f" ({final['error']})" if final["error"] else ""))
    if final["state"] == "stopped":
        print(f"resume with: ladder resume {spec.name}")
    chart = Path(spec.workdir) / spec.name / "ladder_chart.png"
    if chart.is_file():
        print(f"ladder chart: {chart} (also an artifact of the ladder's MLflow run)")
    print(f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {tracking_uri_for(spec)} --port 5000  "
          f"(then open http://127.0.0.1:5000)")


def _progress(s: dict) -> str:
    m = s["latest"]
    if s["state"] != "running" or not m or s.get("phase", "train") != "train":
        pending = f" (decide on v{s['candidate']}: ladder promote/reject {s['ladder']} {s['candidate']})" \
            if s["state"] == "awaiting_promotion" else ""
        return f"[{s['state']}] rung {s['rung']}/{s['rungs']} {s.get('phase', '')}{pending}"
    return (f"rung {s['rung']}/{s['rungs']} step {s['step']}/{s['steps_per_rung']}  "
            f"reward {m.get('reward/mean', 0):.3f}  kl {m.get('train/kl', 0):.4f}  "
            f"{m.get('rollout/tokens_per_s', 0):.0f} tok/s  step {m.get('time/step_s', 0):.2f}s")
