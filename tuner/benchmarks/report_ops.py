"""Markdown table of stored results of any op: tuned vs FlagGems untuned vs native, per key.

usage: python -m tuner.benchmarks.report_ops --op addmm DB [DB ...] > REPORT_addmm.md
Times are the side-by-side pass of each key (tuned winner, FlagGems' own pick, native torch).
A DB opened here is migrated in place if older than the schema: restore committed ones with git.
"""

from __future__ import annotations

import argparse
import math

from tuner.report import best_records


def geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def key_text(key: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in key.items())


def report(op: str, urls: list[str]) -> str:
    recs = sorted((r for url in urls for r in best_records(url, op, None)),
                  key=lambda r: (r["dtype"], sorted(r["key"].items())))
    if not recs:
        return f"# {op}: no stored results\n"
    env = recs[0]["environment"]
    out = [f"# {op}: tuned vs FlagGems untuned vs native ({env.get('gpu_name')}, driver {env.get('driver')}, "
           f"torch {env.get('torch')}, triton {env.get('triton')}, flag_gems {env.get('flag_gems')})\n",
           "| key | dtype | tuned µs | untuned µs | native µs | untuned/tuned | native/tuned | rel err | config |",
           "|---|---|---|---|---|---|---|---|---|"]
    vs_untuned, vs_native = [], []
    for r in recs:
        t, u, n = r["time_us"], r.get("untuned_us"), r.get("native_us")
        su = u / t if u and t else None
        sn = n / t if n and t else None
        vs_untuned += [su] if su else []
        vs_native += [sn] if sn else []
        cfg = " ".join(f"{k}={v}" for k, v in sorted(r["config"].items()) if k != "variant")
        out.append(f"| {key_text(r['key'])} | {r['dtype']} | {t:.2f} | {u or float('nan'):.2f} | "
                   f"{n or float('nan'):.2f} | {su or float('nan'):.2f} | {sn or float('nan'):.2f} | "
                   f"{r['rel_error']:.1e} | {cfg} |")
    out += ["", f"{len(recs)} keys. Speedup over FlagGems untuned: geomean {geomean(vs_untuned):.2f}x "
            f"(min {min(vs_untuned, default=float('nan')):.2f}, max {max(vs_untuned, default=float('nan')):.2f}); "
            f"over native: geomean {geomean(vs_native):.2f}x (min {min(vs_native, default=float('nan')):.2f}, "
            f"max {max(vs_native, default=float('nan')):.2f}). Below 1 means slower.", ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", required=True)
    ap.add_argument("dbs", nargs="+")
    args = ap.parse_args()
    print(report(args.op, args.dbs))


if __name__ == "__main__":
    main()
