"""Summarise stored fused_moe results as a markdown table: tuned vs FlagGems' default config vs
the config vLLM ships for this GPU, all timed in the same worker (CUDA graph, fresh routing per set).

usage: python -m tuner.benchmarks.report_moe DB [DB ...] > REPORT.md
Speedup = baseline time / tuned time, so above 1.0 is faster than the baseline.
Issue 5 targets: >= 1.3x over the default at M <= 64, >= 1.0x vs vLLM's shipped config everywhere.
"""

from __future__ import annotations

import argparse
import math

from tuner.report import best_records

KEY_ORDER = ("E", "N", "K", "top_k", "M")


def rows_from(urls: list[str]) -> list[dict]:
    rows = [r for url in urls for r in best_records(url, "fused_moe", None)]
    return sorted(rows, key=lambda r: (-r["key"]["E"], -r["key"]["N"], r["key"]["M"]))


def speedups(r: dict) -> tuple[float | None, float | None]:
    """(vs FlagGems default, vs vLLM shipped): None where the baseline was not timed."""
    base = r["baselines_us"]
    tuned = r["time_us"]
    default = base.get("untuned", r["untuned_us"])
    shipped = base.get("vllm_shipped")
    return (default / tuned if default else None, shipped / tuned if shipped else None)


def _cfg(c: dict) -> str:
    return (f"{c['BLOCK_SIZE_M']}x{c['BLOCK_SIZE_N']}x{c['BLOCK_SIZE_K']} g{c['GROUP_SIZE_M']} "
            f"w{c['num_warps']} s{c['num_stages']}")


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dbs", nargs="+")
    rows = rows_from(ap.parse_args().dbs)
    if not rows:
        raise SystemExit("no fused_moe results in these databases")
    env = rows[0]["environment"]
    dtypes = ", ".join(sorted({r["dtype"] for r in rows}))
    print(f"# fused_moe {dtypes}: tuned vs FlagGems default vs vLLM shipped ({env.get('gpu_name')}, driver "
          f"{env.get('driver')}, torch {env.get('torch')}, triton {env.get('triton')}, "
          f"flag_gems {env.get('flag_gems')})\n")
    print("| E | N | K | top_k | M | default µs | vLLM shipped µs | tuned µs | vs default | vs shipped | "
          "tuned config | trials | rel err |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    low_m, vs_shipped = [], []
    for r in rows:
        k = r["key"]
        sd, ss = speedups(r)
        if k["M"] <= 64 and sd is not None:
            low_m.append(sd)
        if ss is not None:
            vs_shipped.append(ss)
        base = r["baselines_us"]
        shipped = base.get("vllm_shipped")
        print("| " + " | ".join(str(k[n]) for n in KEY_ORDER) +
              f" | {base.get('untuned', r['untuned_us']):.1f} | {'-' if shipped is None else f'{shipped:.1f}'} | "
              f"{r['time_us']:.1f} | {_x(sd)} | {_x(ss)} | {_cfg(r['config'])} | {r['trials_used']} | "
              f"{r['rel_error']:.1e} |")
    gm = lambda xs: math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")  # noqa: E731
    print(f"\nM <= 64, speedup vs FlagGems default: min {min(low_m, default=float('nan')):.2f}x, "
          f"geomean {gm(low_m):.2f}x over {len(low_m)} keys (target >= 1.3x).")
    print(f"Speedup vs vLLM's shipped H100 config: min {min(vs_shipped, default=float('nan')):.2f}x, "
          f"geomean {gm(vs_shipped):.2f}x over {len(vs_shipped)} keys (target >= 1.0x). Keys: {len(rows)}.")


if __name__ == "__main__":
    main()
