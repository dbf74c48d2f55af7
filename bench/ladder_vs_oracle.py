"""Benchmark: how much of the oracle's gain does each model-judged rung recover?

Runs a ladder as written (default `examples/tiny.yaml`: rung 1 judged by the exact verifier, every later rung by
the rung promoted before it), then, for every rung k judged by a model, the oracle rung: the same student start
(the ladder's version k-1, or the base model with `student.init: base`), the same task, settings and steps, judged by the task's own exact checker instead.
Per rung: held-out accuracy at the start, after the model-judged rung and after the oracle rung, the judge's own
accuracy at the task, and the performance gap recovered, PGR = (judged - start) / (oracle - start): 1 means the
model judge taught as much as the truth would have, 0 nothing, below 0 harm. Prints a table, writes JSON
(bench/results/ladder_vs_oracle.json or `--out`).
Under step votes (`judge.solve_steps`) the checker judges through the task's exact steps: the oracle's student
distills exact worked answers where the judged one distills its judge's composed ones, the same recipe with a judge
that never slips on a step (with rewards alone, the recipe's 2 samples a prompt and `filter` taught the demo's
students nothing: bench/results/ladder_vs_oracle_seeds_rewards.json).
With `--chain`, also the oracle chain: the whole ladder again with the exact checker as every rung's judge, each
rung starting from the oracle chain's rung before (as `init: previous`; the base model with `init: base`), every
version measured on the judged ladder's yardstick. Per rung the oracle chain's held-out and yardstick accuracy,
and for the chain the yardstick gain recovered, (judged last - rung 1) / (oracle last - rung 1).
Usage: python bench/ladder_vs_oracle.py [--spec examples/tiny.yaml] [--chain] [--reuse] [--out F]
  --reuse: read the judged ladder (and oracle rungs) from MLflow when a completed run of them exists.
With `--seeds 0,1,2` (an `init: previous` spec): per seed the judged ladder (`<name>-judged-s<seed>`) and its oracle
chain, no per-rung oracle rungs; then rung 1's student, the judged chain's last version and the oracle chain's last
answer each seed's yardstick items greedy, and the chain's gain share is given over all seeds' items with a paired
bootstrap interval, beside an exact McNemar test of the judged last version against rung 1 (`bench/paired.py`).
Writes bench/results/ladder_vs_oracle_seeds.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # bench/paired.py


def run_ladder(spec: dict, folder: Path, reuse: bool) -> list[dict]:
    """`ladder run` of `spec` (unless `reuse` and a completed ladder of its name exists); its lineage rows."""
    from ladder.registry.lineage import lineage_rows
    from ladder.registry.store import tracking_uri_for
    from ladder.registry.registry import Registry
    from ladder.spec import load_spec

    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    loaded = load_spec(path)
    reg = Registry.find(loaded.name, tracking_uri_for(loaded)) if reuse else None
    done = reg is not None and (p := reg.load_progress()) is not None and p.state.value == "completed"
    if not done:
        print(f"== ladder run {loaded.name}", flush=True)
        res = subprocess.run([sys.executable, "-m", "ladder.cli", "run", str(path)], cwd=ROOT)
        if res.returncode != 0:
            sys.exit(f"ladder {loaded.name} failed (exit {res.returncode})")
    return lineage_rows(Registry.for_spec(loaded))


def last_version(rows: list[dict], rung: int) -> dict:
    """The rung's newest version, promoted or not (the last rung's result)."""
    return max((r for r in rows if r["rung"] == rung), key=lambda r: r["version"])


def promoted(rows: list[dict], rung: int) -> dict:
    found = [r for r in rows if r["rung"] == rung and r["status"] == "promoted"]
    if not found:
        sys.exit(f"rung {rung}: no promoted version, so no later rung to compare")
    return found[-1]


def oracle_spec(spec, k: int, base_dir: str, name: str = "") -> dict:
    """Rung k of `spec` alone, from `base_dir`, judged by the task's own checker, measured on `spec`'s yardstick."""
    one = spec.for_rung(k).model_dump(mode="json", exclude_none=True)
    one.update(name=name or f"{spec.name}-oracle-r{k}", rungs=1, schedule=[])
    yardstick = spec.eval.yardstick or spec.for_rung(spec.rungs).task.source  # the ladder's, not this rung's task
    one["eval"] = {**one["eval"], "yardstick": yardstick.model_dump(mode="json", exclude_none=True)}
    one["student"] = {**one["student"], "base": base_dir, "init": "base"}
    one["judge"] = {**one["judge"], "initial": {"kind": "task"}}
    one["promotion"] = {**one["promotion"], "policy": "auto", "min_auc": 0.0, "collapse_share": 1.0,
                        "tolerance": 1.0}
    return one


def pgr(start, judged, oracle):
    if None in (start, judged, oracle) or abs(oracle - start) < 1e-9:
        return None
    return (judged - start) / (oracle - start)


def oracle_chain(spec, judged: list[dict], per_rung: list[dict], folder: Path, reuse: bool,
                 keep_last: bool = False) -> dict:
    """The ladder's rungs 2.. again, each judged by the checker and starting from the oracle chain's rung before
    (rung 1 is the judged ladder's own: the checker judges it there too); per rung its held-out and yardstick
    accuracy, and the share of the oracle chain's yardstick gain past rung 1 the judged chain kept. With
    `init: base` every rung starts from the base either way: the chain is the per-rung oracle rungs (`per_rung`)."""
    from ladder.registry.registry import Registry
    from ladder.spec import load_spec

    first = promoted(judged, 1)
    rungs = [{"rung": 1, "heldout": first["heldout_accuracy"], "yardstick": first.get("yardstick")}]
    if spec.student.init == "base":
        rungs += [{"rung": e["rung"], "start": e["oracle_start"], "heldout": e["oracle"],
                   "yardstick": e["oracle_yardstick"]} for e in per_rung[1:]]
    else:
        start = Registry.for_spec(spec).download(str(first["version"]), str(folder / "chain-v1"))
        dirs = {1: start}
        for k in range(2, spec.rungs + 1):
            one = oracle_spec(spec, k, start, name=f"{spec.name}-{chain_name(spec)}-r{k}")
            row = run_ladder(one, folder, reuse)[0]
            rungs.append({"rung": k, "start": row["start_accuracy"], "heldout": row["heldout_accuracy"],
                          "yardstick": row.get("yardstick")})
            if k < spec.rungs or keep_last:
                reg = Registry.for_spec(load_spec(folder / f"{one['name']}.yaml"))  # written by run_ladder
                start = dirs[k] = reg.download(str(row["version"]), str(folder / f"chain-v{k}"))
    last_judged = last_version(judged, spec.rungs)
    return {"rungs": rungs, "chain_recovered": pgr(rungs[0]["yardstick"], last_judged.get("yardstick"),
                                                   rungs[-1]["yardstick"]),
            **({"dirs": dirs} if keep_last and spec.student.init != "base" else {})}


def chain_name(spec) -> str:
    """The oracle chain's ladders' name: `oracle-steps` where the checker teaches through step votes' exact steps
    (a spec with `judge.solve_steps`: the checker's table is the task's arithmetic, its worked answers what the
    student distills), `oracle-chain` where it gives rewards alone."""
    return "oracle-steps" if spec.judge.mode == "solve" and spec.judge.solve_steps else "oracle-chain"


def judged_raw(spec_path: str, spec, seed=None) -> dict:
    """The spec as written, named `<name>-judged` (`-judged-s<seed>` with a seed of the bench's own)."""
    raw = yaml.safe_load(Path(spec_path).read_text())
    raw["name"] = f"{spec.name}-judged" + ("" if seed is None else f"-s{seed}")
    raw["workdir"] = str(spec.workdir)  # resolved as the spec file resolved it
    raw["student"] = {**raw["student"], "base": spec.student.base}
    if seed is not None:
        raw["seed"] = seed
    return raw


def seeded_chains(args, spec) -> dict:
    """Per seed the judged ladder and its oracle chain (`init: previous`); then rung 1's student, the judged
    chain's last version and the oracle chain's last answer the seed's yardstick items, greedy, and the judged
    chain's share of the oracle chain's gain past rung 1 is tested on those items, paired (`bench/paired.py`)."""
    from ladder.registry.registry import Registry
    from ladder.spec import load_spec
    from paired import chain_share, greedy_right, mcnemar

    if spec.student.init != "previous":
        sys.exit("--seeds compares chains: the spec's student.init must be previous")
    per_seed, runs = [], []
    for seed in args.seeds:
        folder = Path(tempfile.mkdtemp(prefix=f"ladder-vs-oracle-s{seed}-"))
        raw = judged_raw(args.spec, spec, seed)
        judged = run_ladder(raw, folder, args.reuse)
        judged_spec = load_spec(folder / f"{raw['name']}.yaml")
        chain = oracle_chain(judged_spec, judged, [], folder, args.reuse, keep_last=True)
        last = last_version(judged, judged_spec.rungs)
        last_dir = Registry.for_spec(judged_spec).download(str(last["version"]), str(folder / "judged-last"))
        chain_dirs = chain.pop("dirs")  # where the versions were downloaded to
        dirs = {"first": chain_dirs[1], "judged": last_dir, "oracle": chain_dirs[judged_spec.rungs]}
        per_seed.append({"seed": seed, "judged_lineage": [{k: r.get(k) for k in LINEAGE_KEYS} for r in judged],
                         "oracle_chain": chain})
        runs += [(str(dirs[k]), judged_spec) for k in ("first", "judged", "oracle")]
    print("== greedy answers on every seed's yardstick items", flush=True)
    rights = greedy_right(runs)
    items = [dict(zip(("first", "judged", "oracle"), rights[3 * i:3 * i + 3])) for i in range(len(args.seeds))]
    for entry, its in zip(per_seed, items):
        entry["yardstick_items"] = {k: sum(v) / len(v) for k, v in its.items()}
    pooled = {k: [x for its in items for x in its[k]] for k in ("first", "judged", "oracle")}
    return {"seeds": per_seed, "chain_share": chain_share(items),
            "judged_last_vs_rung1": mcnemar(pooled["first"], pooled["judged"]),
            "oracle_last_vs_judged_last": mcnemar(pooled["judged"], pooled["oracle"])}


LINEAGE_KEYS = ("rung", "version", "status", "task", "judged_by", "start_accuracy", "heldout_accuracy",
                "judge_task_accuracy", "yardstick")


def print_seeds(result: dict, fmt) -> None:
    print(f"\n{'seed':>4}  {'rung 1':>7} {'judged last':>11} {'oracle last':>11}  (greedy on the seed's yardstick items)")
    for s in result["seeds"]:
        y = s["yardstick_items"]
        print(f"{s['seed']:>4}  {fmt(y['first']):>7} {fmt(y['judged']):>11} {fmt(y['oracle']):>11}")
    c, m = result["chain_share"], result["judged_last_vs_rung1"]
    print(f"the judged chain kept {fmt(c['share'])} of the oracle chain's gain past rung 1 over {c['items']} paired "
          f"items (95% CI {fmt(c['ci95'][0])}-{fmt(c['ci95'][1])}; per seed "
          + ", ".join(fmt(v) for v in c["per_seed"]) + ")")
    print(f"judged last vs rung 1: right only for the last on {m['b_only']}, only for rung 1 on {m['a_only']} "
          f"items, McNemar p = {m['p_value']:.2g}")


def print_chain(chain: dict, judged: list[dict], fmt) -> None:
    judged_yard = {r["rung"]: r.get("yardstick") for r in sorted(judged, key=lambda r: r["version"])}
    print(f"\n{'rung':>4}  {'judged yardstick':>16} {'oracle chain yardstick':>22} {'oracle chain held-out':>21}")
    for r in chain["rungs"]:
        print(f"{r['rung']:>4}  {fmt(judged_yard.get(r['rung'])):>16} {fmt(r['yardstick']):>22} {fmt(r['heldout']):>21}")
    print(f"chain: the judged ladder kept {fmt(chain['chain_recovered'])} of the oracle chain's yardstick gain past "
          "rung 1")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", default=str(ROOT / "examples" / "tiny.yaml"))
    ap.add_argument("--reuse", action="store_true", help="Read completed ladders from MLflow instead of rerunning.")
    ap.add_argument("--chain", action="store_true", help="Also run the whole chain with the checker as every "
                                                         "rung's judge (the ladder's ceiling).")
    ap.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")],
                    help="Comma-separated ladder seeds: per seed the judged ladder and its oracle chain (no per-rung "
                         "oracle rungs), then the chain's gain share tested on the same yardstick items, paired.")
    ap.add_argument("--out", default=None, help="JSON output (default bench/results/ladder_vs_oracle.json, with "
                                                "--seeds ladder_vs_oracle_seeds.json).")
    args = ap.parse_args()
    args.out = args.out or str(ROOT / "bench" / "results" /
                               ("ladder_vs_oracle_seeds.json" if args.seeds else "ladder_vs_oracle.json"))
    args.spec, args.out = str(Path(args.spec).resolve()), str(Path(args.out).resolve())
    return args


def per_rung(spec, judged_spec, judged: list[dict], folder: Path, reuse: bool) -> list[dict]:
    """Per rung of the judged ladder: its start and end, and for a model-judged rung the oracle rung from the same
    start (the rung before's student, or the base model) with its performance gap recovered."""
    from ladder.registry.registry import Registry

    reg = Registry.for_spec(judged_spec)
    results = []
    for k in range(1, judged_spec.rungs + 1):
        row = promoted(judged, k) if k < judged_spec.rungs else last_version(judged, k)
        entry = {"rung": k, "task": row["task"], "judged_by": row["judged_by"], "judge_mode": row["judge_mode"],
                 "start": row["start_accuracy"], "judged": row["heldout_accuracy"],
                 "judge_task_accuracy": row.get("judge_task_accuracy"),
                 "judge_majority_accuracy": row.get("judge_majority_accuracy")}
        if str(row["judged_by"]).startswith("verifier:"):
            entry.update(oracle=row["heldout_accuracy"], pgr=1.0, note="judged by the verifier: the oracle itself")
        else:
            base = spec.student.base if judged_spec.student.init == "base" else \
                reg.download(str(promoted(judged, k - 1)["version"]), str(folder / f"v-rung{k - 1}"))
            oracle = run_ladder(oracle_spec(judged_spec, k, base), folder, reuse)[0]
            entry.update(oracle=oracle["heldout_accuracy"], oracle_start=oracle["start_accuracy"],
                         oracle_yardstick=oracle.get("yardstick"),
                         pgr=pgr(row["start_accuracy"], row["heldout_accuracy"], oracle["heldout_accuracy"]))
        results.append(entry)
    return results


def main() -> None:
    args = parse_args()
    os.chdir(ROOT)  # a spec's relative paths (workdir, models) are read from the repository root, as `make` does
    from ladder.spec import load_spec

    spec = load_spec(args.spec)
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    if args.seeds:
        result = {"spec": relative(args.spec), **seeded_chains(args, spec)}
        print_seeds(result, fmt)
        write(result, args.out)
        return
    raw = judged_raw(args.spec, spec)
    folder = Path(tempfile.mkdtemp(prefix="ladder-vs-oracle-"))
    judged = run_ladder(raw, folder, args.reuse)
    judged_spec = load_spec(folder / f"{raw['name']}.yaml")
    results = per_rung(spec, judged_spec, judged, folder, args.reuse)
    print(f"\n{'rung':>4}  {'task':<34} {'start':>6} {'judged':>7} {'oracle':>7} {'PGR':>6}  judge solves")
    for e in results:
        print(f"{e['rung']:>4}  {str(e['task'])[:34]:<34} {fmt(e['start']):>6} {fmt(e['judged']):>7} "
              f"{fmt(e['oracle']):>7} {fmt(e['pgr']):>6}  {fmt(e['judge_task_accuracy'])}"
              + ("" if e["judge_majority_accuracy"] is None else f" (majority {fmt(e['judge_majority_accuracy'])})"))
    out = {"spec": relative(args.spec), "rungs": results}
    if args.chain:
        out["oracle_chain"] = oracle_chain(judged_spec, judged, results, folder, args.reuse)
        print_chain(out["oracle_chain"], judged, fmt)
    write(out, args.out)


def relative(path: str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else path


def write(out: dict, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
