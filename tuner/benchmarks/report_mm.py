"""Summarise stored mm results (one or more tuner databases) as a markdown table of ratios.

usage: python -m tuner.benchmarks.report_mm --copy-bw COPY_BW.json DB [DB ...] > REPORT.md
Ratios are time / cuBLAS time, so below 1.0 is faster than cuBLAS. "weight BW" is the bytes of
B (N x K) read per call over the tuned time, as a fraction of the measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import json
import math

from tuner.report import best_records

LAYERS = {(4608, 3584): "qkv", (3584, 3584): "o", (37888, 3584): "gate_up", (3584, 18944): "down",
          (151700, 3584): "lm_head"}


def rows_from(urls: list[str]) -> list[dict]:
    rows = [r for url in urls for r in best_records(url, "mm", None)]
    order = list(LAYERS)
    return sorted(rows, key=lambda r: (order.index((r["key"]["N"], r["key"]["K"]))
                                       if (r["key"]["N"], r["key"]["K"]) in LAYERS else 99, r["key"]["M"]))


def geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copy-bw", required=True)
    ap.add_argument("dbs", nargs="+")
    args = ap.parse_args()
    bw = json.load(open(args.copy_bw))["bandwidth_Bps"]
    rows = rows_from(args.dbs)
    env = rows[0]["environment"] if rows else {}
    print(f"# mm: tuned vs FlagGems untuned vs cuBLAS ({env.get('gpu_name')}, driver {env.get('driver')}, "
          f"torch {env.get('torch')}, triton {env.get('triton')}, flag_gems {env.get('flag_gems')})\n")
    print(f"Copy bandwidth measured in the same session: {bw / 1e12:.2f} TB/s. Times are µs per call, "
          "CUDA-graph replays over rotating input sets (weights not in L2), median of 7 samples.\n")
    print("| layer | M | N | K | cuBLAS | FlagGems untuned | tuned | tuned / cuBLAS | untuned / cuBLAS | "
          "tuned variant | weight BW | trials |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    t_ratio, u_ratio = [], []
    for r in rows:
        k = r["key"]
        name = LAYERS.get((k["N"], k["K"]), "?")
        tr = r["time_us"] / r["native_us"]
        ur = r["untuned_us"] / r["native_us"] if r["untuned_us"] else float("nan")
        t_ratio.append(tr)
        u_ratio.append(ur)
        wbw = k["N"] * k["K"] * 2 / (r["time_us"] * 1e-6) / bw
        c = r["config"]
        cfg = f"{c['variant']} {c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']} sk{c['SPLIT_K']} w{c['num_warps']} s{c['num_stages']}"
        print(f"| {name} | {k['M']} | {k['N']} | {k['K']} | {r['native_us']:.1f} | {r['untuned_us']:.1f} | "
              f"{r['time_us']:.1f} | {tr:.3f} | {ur:.3f} | {cfg} | "
              f"{wbw:.0%}{'' if k['M'] <= 16 else ' (n/a)'} | {r['trials_used']} |")
    print(f"\nGeometric mean tuned / cuBLAS: {geomean(t_ratio):.3f} (worst {max(t_ratio):.3f}); "
          f"FlagGems untuned / cuBLAS: {geomean(u_ratio):.3f} (worst {max(u_ratio):.3f}); keys: {len(rows)}.")


if __name__ == "__main__":
    main()
