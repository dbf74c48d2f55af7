"""Where the test suite's CPU goes: runs pytest on what it is given and samples, every second, the CPU time of
every process it starts (Ray's workers, engines, trainers and controllers by the title Ray gives them, CLI calls,
`mlflow server`, Ray's own daemons, compilers), then prints CPU-seconds by kind of process and writes JSON.
`make test` is CPU-bound on 2 cores (the cores busy ~95% of the run), so its time is the suite's CPU-seconds over
the cores: what this counts is what a change must cut.
Usage: python bench/suite_cpu.py [--out F] -- tests/integration/test_ladder.py -k temp_folders
Writes bench/results/suite_cpu.json (or `--out`). A process seen only between two samples is missed: the figures
are a lower bound, close for the long-lived processes that dominate.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> list[int]:
    kids = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                kids[int(Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[1])].append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack += kids.get(pid, [])
    return out


def kind(cmdline: str) -> str:
    """A process's kind: Ray's title for its workers (`ray::Trainer`), else the program and its first word."""
    if cmdline.startswith("ray::"):  # ray::Trainer, ray::Trainer.step, ray::<actor name>:RolloutWorker.generate
        title = cmdline[5:].split()[0] if cmdline[5:].split() else "worker"
        return "ray::" + title.rsplit(":", 1)[-1].split(".")[0]
    words = cmdline.split()
    names = [Path(w).name for w in words[:4]]
    for marker in ("ladder.cli", "pytest", "mlflow", "uvicorn", "gcs_server", "raylet", "dashboard.py", "agent.py",
                   "log_monitor.py", "monitor.py", "cc1plus", "setup_worker.py", "default_worker.py"):
        if any(marker in w for w in words[:8]):
            return f"ladder {words[words.index('ladder.cli') + 1]}" if marker == "ladder.cli" and \
                words.index("ladder.cli") + 1 < len(words) else marker
    return " ".join(names[:2])


def sample(root: int, seen: dict) -> None:
    for pid in descendants(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            cmd = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
        except OSError:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        seen[pid] = (kind(cmd) if cmd else seen.get(pid, ("?",))[0], cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "suite_cpu.json"))
    ap.add_argument("pytest_args", nargs="+", help="what pytest is given (after --)")
    args = ap.parse_args()
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *args.pytest_args], cwd=ROOT)
    seen: dict[int, tuple[str, float]] = {}
    while proc.poll() is None:
        sample(proc.pid, seen)
        time.sleep(1.0)
    by_kind = collections.Counter()
    count = collections.Counter()
    for name, cpu in seen.values():
        by_kind[name] += cpu
        count[name] += 1
    total = sum(by_kind.values()) or 1e-9
    print(f"\n{'cpu s':>8} {'share':>6} {'procs':>5}  kind")
    for name, cpu in by_kind.most_common(25):
        print(f"{cpu:8.1f} {cpu / total:6.1%} {count[name]:5d}  {name}")
    wall = time.monotonic() - start
    print(f"{total:8.1f} cpu-seconds in {wall:.0f} s ({total / wall:.2f} cores busy on average); pytest exit "
          f"{proc.returncode}")
    out = {"pytest_args": args.pytest_args, "wall_s": round(wall, 1), "cpu_s": round(total, 1),
           "exit": proc.returncode, "by_kind": {k: {"cpu_s": round(v, 1), "processes": count[k]}
                                                 for k, v in by_kind.most_common()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
