"""Markdown hot-op tables of every stored profile run (tuner_profile_runs / tuner_hot_ops).

usage: python -m tuner.benchmarks.report_profile DB [--top 15] > PROFILE.md
One table per run: rank, op, input shapes, kernel, calls, GPU time, share of the run's GPU time.
"""
from __future__ import annotations

import argparse

from sqlalchemy import text

from db import open_database


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("db")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    db = open_database(args.db, create=False)
    with db.engine.connect() as c:
        runs = c.execute(text("select r.id, r.workloads, r.flaggems, r.total_us, r.overhead_ratio, r.created_at, "
                              "e.gpu_name from tuner_profile_runs r join tuner_environments e "
                              "on e.id = r.environment_id order by r.id")).all()
        for rid, workloads, flaggems, total, overhead, created, gpu in runs:
            rows = c.execute(text("select rank, op, shapes, kernel, calls, total_us, share, tunable from tuner_hot_ops "
                                  "where profile_run_id = :r order by rank limit :n"), {"r": rid, "n": args.top}).all()
            unattributed = c.execute(text("select coalesce(sum(share), 0) from tuner_hot_ops where profile_run_id = :r "
                                          "and op = '(unattributed)'"), {"r": rid}).scalar()
            print(f"\n## run {rid}: {workloads}, {'FlagGems' if flaggems else 'native'} ({gpu}, {created})\n")
            print(f"GPU kernel time {total / 1e3:.2f} ms; unattributed {unattributed:.1%}"
                  + (f"; profiler overhead x{overhead:.2f}" if overhead else "") + "\n")
            print("| # | op | shapes | kernel | calls | ms | share | tunable |\n|---|---|---|---|---|---|---|---|")
            for rank, op, shapes, kernel, calls, us, share, tunable in rows:
                print(f"| {rank} | {op} | {shapes[:60]} | {kernel[:60]} | {calls} | {us / 1e3:.3f} | {share:.1%} | {tunable} |")
    db.dispose()


if __name__ == "__main__":
    main()
