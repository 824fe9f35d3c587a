"""Markdown hot-op tables of every stored profile run (tuner_profile_runs / tuner_hot_ops).

usage: python -m tuner.benchmarks.report_profile DB [--top 15] > PROFILE.md
One table per run: rank, op, input shapes, kernel, calls, GPU time, share of the run's GPU time.
"""
from __future__ import annotations

import argparse

from db import open_database, profile_queries
from tuner.profiling.profiler import UNATTRIBUTED


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("db")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    db = open_database(args.db, create=False)
    with db.session() as s:
        for run in reversed(profile_queries.profile_runs(s, limit=10**6)):
            rows = profile_queries.hot_ops(s, run)
            unattributed = sum(r.share for r in rows if r.op == UNATTRIBUTED)
            print(f"\n## run {run.id}: {run.workloads}, {'FlagGems' if run.flaggems else 'native'} "
                  f"({run.environment.gpu_name}, {run.created_at})\n")
            print(f"GPU kernel time {run.total_us / 1e3:.2f} ms; unattributed {unattributed:.1%}"
                  + (f"; profiler overhead x{run.overhead_ratio:.2f}" if run.overhead_ratio else "") + "\n")
            print("| # | op | shapes | kernel | calls | ms | share | tunable |\n|---|---|---|---|---|---|---|---|")
            for r in rows[: args.top]:
                print(f"| {r.rank} | {r.op} | {r.shapes[:60]} | {r.kernel[:60]} | {r.calls} | {r.total_us / 1e3:.3f} | "
                      f"{r.share:.1%} | {r.tunable} |")
    db.dispose()


if __name__ == "__main__":
    main()
