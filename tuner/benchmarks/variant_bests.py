"""Which variants of a search space compete where: per study (one op and key) of a tuner database,
each variant's best measured time over the key's best, and how many configs of it the search
measured (a variant TPE rarely tried is a weak verdict). These are the search's own timings: the
record's winner is the best of a few finalists re-measured beside the baselines, so the two can
differ where variants are within noise (lm_head M=4096 in session 7).

usage: python -m tuner.benchmarks.variant_bests DB [--ops mm,addmm] > VARIANTS.md
Why: the search's winner table hides the runners-up. On the H200 (session 7) stream-K won one key
of 37, but after its fix its best was 1.01-1.43x of each key's best (median 1.10), where before
the fix it lost by 2-22x (results/gemm_h200/session7/VARIANTS.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tuner.benchmarks.workers_bench import measured, studies
from tuner.tuning.measurer import Status


def variant_bests(url: str, ops: list[str]) -> list[dict]:
    """One row per study of `ops`: {"study", "op", "key", "label", "best_us", "variants": {name:
    (ratio, n)}}. A label is op, key and dtype, plus the study's source hash where two studies of
    one database share those (an old and a new kernel source)."""
    rows = []
    for name, trials in studies(url).items():
        parts = name.split("|")
        if len(parts) < 3 or parts[0] not in ops:  # not a study tuner named (op|key|dtype|...)
            continue
        best: dict[str, float] = {}
        count: dict[str, int] = defaultdict(int)
        for t in measured(trials):
            a = t.user_attrs
            if t.state != TrialState.COMPLETE or a.get("status") != Status.OK or a.get("canonical") is None:
                continue
            variant = json.loads(a["canonical"]).get("variant", "-")
            count[variant] += 1
            best[variant] = min(best.get(variant, float("inf")), t.value)
        if best:
            top = min(best.values())
            rows.append({"study": name, "op": parts[0], "key": parts[1], "label": f"{parts[1]} {parts[2]}",
                         "best_us": top, "variants": {v: (best[v] / top, count[v]) for v in sorted(best)}})
    seen = defaultdict(int)
    for r in rows:
        seen[(r["op"], r["label"])] += 1
    for r in rows:
        if seen[(r["op"], r["label"])] > 1:
            r["label"] += " " + next((p for p in r["study"].split("|") if p.startswith("src=")), r["study"])
    return sorted(rows, key=lambda r: (ops.index(r["op"]), _dims(r["key"]), r["label"]))


def _dims(key: str) -> tuple:
    """(N, K, M, ...) of "M=1,N=3584,K=3584,BT=1": one layer's keys together, by M."""
    d = dict(kv.split("=") for kv in key.split(",") if "=" in kv)
    return tuple(int(d.get(k, 0)) for k in ("N", "K", "M"))


def markdown(rows: list[dict]) -> str:
    names = sorted({v for r in rows for v in r["variants"]})
    out = ["| op | key | best µs | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for r in rows:
        cells = [f"{r['variants'][v][0]:.2f} ({r['variants'][v][1]})" if v in r["variants"] else "-" for v in names]
        out.append(f"| {r['op']} | {r['label']} | {r['best_us']:.1f} | " + " | ".join(cells) + " |")
    out.append("\nEach cell: the variant's best time / the key's best time (configs of it measured).")
    for v in names:
        ratios = [r["variants"][v][0] for r in rows if v in r["variants"]]
        wins = sum(1 for x in ratios if x == 1.0)
        out.append(f"- {v}: best of {wins} of {len(ratios)} studies; median {statistics.median(ratios):.2f}, "
                   f"worst {max(ratios):.2f}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("db", help="a tuner database: a file, or a SQLAlchemy URL")
    ap.add_argument("--ops", default="mm,addmm", help="comma-separated ops (default mm,addmm)")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if "://" not in args.db and not Path(args.db).is_file():
        raise SystemExit(f"variant_bests: no database file {args.db}")
    url = args.db if "://" in args.db else f"sqlite:///{args.db}"
    print(markdown(variant_bests(url, args.ops.split(","))))


if __name__ == "__main__":
    main()
