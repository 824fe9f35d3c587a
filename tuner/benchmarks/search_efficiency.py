"""Search efficiency against an exhaustive grid recorded on the GPU.

For each grid study in DB: run each sampler (the real tuner.tuning.search code) against the recorded
timings with several seeds, and count the measured configs until the best found is within 2%
of the grid's best. usage: python -m tuner.benchmarks.search_efficiency GRID_DB [--seeds 10]
"""

from __future__ import annotations

import argparse
import json
import statistics

import optuna

from kernels import get_kernel
from tuner.tuning.budget import Budget
from tuner.tuning.search import EventKind, run_search
from tuner.tuning.replay import ReplayMeasurer, recorded_times


class _Reached(Exception):
    pass


def evaluations_to_target(kernel, key, times, sampler, seed, slack=1.02, cap=None):
    """Measured configs until one is within `slack` of the grid's best (None: not within cap)."""
    target = min(times.values()) * slack

    def on_event(ev):
        if ev.kind == EventKind.MEASURED and ev.time_us <= target:
            raise _Reached(ev.measured)

    storage = optuna.storages.InMemoryStorage()
    try:
        run_search(kernel=kernel, key=key, dtype="bf16", device="cuda", storage=storage, study_name="replay",
                   measurer=ReplayMeasurer(times), sampler=sampler, budget=Budget(trials=cap or len(times)),
                   seed=seed, on_event=on_event)
    except _Reached as hit:
        return hit.args[0]
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--samplers", default="tpe,random")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = args.db if "://" in args.db else f"sqlite:///{args.db}"
    kernel = get_kernel("mm")
    out = []
    for s in optuna.get_all_study_summaries(url):
        name = s.study_name
        key = tuple(int(kv.split("=")[1]) for kv in name.split("|")[1].split(","))
        times = recorded_times(url, name)
        row = {"study": name, "grid_size": len(times), "grid_best_us": min(times.values())}
        for sampler in args.samplers.split(","):
            evals = [evaluations_to_target(kernel, key, times, sampler, seed) for seed in range(args.seeds)]
            found = [e for e in evals if e is not None]
            row[sampler] = {"evaluations": evals,
                            "median": statistics.median(found) if found else None,
                            "median_fraction": statistics.median(found) / len(times) if found else None}
        out.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
