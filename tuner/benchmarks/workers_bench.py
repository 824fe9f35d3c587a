"""Many workers (or GPUs) on one study, against the exhaustive grid (issues 13 and 17).

Reads the Optuna studies that `tuner tune` left in one database per run of the same keys (e.g.
`--workers 1` and `--workers 4`, or `--gpus 0` and `--gpus 0,1`, same --trials and --seed),
matched by study name, and reports per run and key: the search's wall time until a measured
config came within SLACK of the reference (from the first trial's start: the baselines before it
are the same for every run), configs measured, and configs measured twice (the claims must make
that 0). The reference is the grid's best when a grid database (`--sampler grid`: every valid
config measured) is given, else the best config any of the runs measured for that key.

usage: python -m tuner.benchmarks.workers_bench [--grid GRID_DB] LABEL=RUN_DB [LABEL=RUN_DB ...]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterable
from datetime import datetime

import optuna
from optuna.trial import FrozenTrial, TrialState

SLACK = 1.02  # "within 2% of the grid's best"
MEASURED = {"ok", "failed", "wrong", "crashed", "hang"}  # a config measured (Status values)


def studies(url: str) -> dict[str, list[FrozenTrial]]:
    storage = optuna.storages.RDBStorage(url)
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage).get_trials(deepcopy=False)
            for s in optuna.get_all_study_summaries(storage)}


def measured(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that measured their config (a re-proposed duplicate did not)."""
    return [t for t in trials if t.user_attrs.get("status") in MEASURED and not t.user_attrs.get("duplicate")]


def best_us(trials: Iterable[FrozenTrial]) -> float | None:
    ok = [t.value for t in measured(trials) if t.state == TrialState.COMPLETE and t.user_attrs.get("status") == "ok"]
    return min(ok) if ok else None


def _seconds(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds()


def summarise(trials: list[FrozenTrial], reference: float | None, slack: float = SLACK) -> dict:
    """One run's study against a reference time: wall time to target, measured, measured twice."""
    done = measured(trials)
    counts = Counter(t.user_attrs["canonical"] for t in done)
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    t0 = min(starts) if starts else None
    ends = sorted((t.datetime_complete, t.value) for t in done
                  if t.datetime_complete is not None and t.state == TrialState.COMPLETE
                  and t.user_attrs.get("status") == "ok")
    target = reference * slack if reference else None
    hit = next((when for when, value in ends if target is not None and value <= target), None)
    best = best_us(trials)
    return {
        "measured": len(done), "measured_twice": sum(n - 1 for n in counts.values() if n > 1),
        "running_left": sum(t.state == TrialState.RUNNING for t in trials),
        "measured_by_gpu": dict(sorted(Counter(t.user_attrs.get("gpu", "-") for t in done).items())),
        "best_us": best, "reference_us": reference,
        "best_over_reference": best / reference if best and reference else None,
        "s_to_target": _seconds(t0, hit) if hit and t0 else None,
        "search_s": _seconds(t0, ends[-1][0]) if ends and t0 else None,
    }


def compare(grid_url: str | None, runs: dict[str, str], slack: float = SLACK) -> list[dict]:
    """One row per run and study. The reference is the grid's best for the studies the grid has;
    without a grid, or for a study the grid never reached, the best any run measured."""
    loaded = {label: studies(url) for label, url in runs.items()}
    grid = studies(grid_url) if grid_url else {}
    if grid_url:
        for label, run in loaded.items():
            if run and not set(run) & set(grid):
                raise SystemExit(f"no study of run {label} is in the grid database (other keys, dtype or "
                                 "kernel source?)")
    rows = []
    for label, run in loaded.items():
        for name, trials in sorted(run.items()):
            if name not in grid:
                found = [b for b in (best_us(other[name]) for other in loaded.values() if name in other) if b]
                rows.append({"run": label, "study": name, "reference": "best of runs",
                             **summarise(trials, min(found) if found else None, slack)})
                continue
            g = grid[name]
            rows.append({"run": label, "study": name, "reference": "grid", "grid_measured": len(measured(g)),
                         "grid_measured_twice": summarise(g, None)["measured_twice"],
                         **summarise(trials, best_us(g), slack)})
    return rows


def _url(path: str) -> str:
    return path if "://" in path else f"sqlite:///{path}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", help="database of the --sampler grid run (default: the best of the runs)")
    ap.add_argument("runs", nargs="+", help="LABEL=DB, one per run (e.g. w1=/tmp/w1.db w4=/tmp/w4.db)")
    ap.add_argument("--slack", type=float, default=SLACK)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    runs = {}
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            ap.error(f"a run is LABEL=DB, got {spec!r}")
        runs[label] = _url(path)
    for row in compare(_url(args.grid) if args.grid else None, runs, args.slack):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
