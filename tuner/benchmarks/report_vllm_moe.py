"""Summarise stored vllm_fused_moe results (issue 16) as a markdown table: tuned vs vLLM's shipped
config for this GPU (where vLLM ships one), vs vLLM's default config and vs FlagGems' default,
all timed in vLLM's own fused-MoE kernel in the same worker.

usage: python -m tuner.benchmarks.report_vllm_moe DB [DB ...] > REPORT.md
Speedup = baseline time / tuned time, so above 1.0 is faster than the baseline.
Issue 16 targets: geomean >= 1.05x vLLM's shipped config; >= 1.2x vLLM's default where nothing is
shipped.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Mapping
from typing import Any

from tuner.benchmarks.report_moe import KEY_ORDER, _cfg, _x
from tuner.report import best_records

BASELINES = ("vllm_shipped", "vllm_default", "flaggems_default")
TARGETS = {"vllm_shipped": 1.05, "vllm_default": 1.2}  # the default's only where nothing is shipped


def rows_from(urls: Iterable[str]) -> list[dict]:
    rows = [r for url in urls for r in best_records(url, "vllm_fused_moe", None)]
    return sorted(rows, key=lambda r: (r["dtype"], -r["key"]["E"], -r["key"]["N"], r["key"]["M"]))


def speedups(r: Mapping[str, Any]) -> dict[str, float | None]:
    """Per baseline: its time / the tuned time, None where it was not timed."""
    base = r.get("baselines_us") or {}
    return {b: base[b] / r["time_us"] if base.get(b) else None for b in BASELINES}


def geomean(xs: list[float]) -> float:
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def summary(rows: list[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per dtype: geomean and min vs shipped (keys vLLM ships), vs vLLM's default where nothing is
    shipped, vs FlagGems' default; the shapes vLLM ships (E, N, K, top_k)."""
    out: dict[str, dict[str, Any]] = {}
    for dtype in sorted({r["dtype"] for r in rows}):
        mine = [(r, speedups(r)) for r in rows if r["dtype"] == dtype]
        shipped = [s["vllm_shipped"] for _, s in mine if s["vllm_shipped"] is not None]
        unshipped = [s["vllm_default"] for _, s in mine if s["vllm_shipped"] is None and s["vllm_default"] is not None]
        fg = [s["flaggems_default"] for _, s in mine if s["flaggems_default"] is not None]
        out[dtype] = {
            "keys": len(mine),
            "vs_shipped": {"n": len(shipped), "geomean": geomean(shipped), "min": min(shipped, default=None)},
            "vs_default_unshipped": {"n": len(unshipped), "geomean": geomean(unshipped),
                                     "min": min(unshipped, default=None)},
            "vs_flaggems_default": {"n": len(fg), "geomean": geomean(fg)},
            "shipped_shapes": sorted({tuple(r["key"][n] for n in KEY_ORDER[:-1]) for r, s in mine
                                      if s["vllm_shipped"] is not None}),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dbs", nargs="+")
    args = ap.parse_args()
    rows = rows_from(args.dbs)
    if not rows:
        raise SystemExit("no vllm_fused_moe results in these databases")
    env = rows[0]["environment"]
    print(f"# vLLM's fused MoE kernel: tuned vs vLLM shipped vs vLLM default vs FlagGems default "
          f"({env.get('gpu_name')}, torch {env.get('torch')}, triton {env.get('triton')}, vllm {env.get('vllm')})\n")
    print("| dtype | E | N | K | top_k | M | tuned µs | shipped µs | vLLM default µs | FlagGems default µs | "
          "vs shipped | vs default | vs FlagGems | tuned config | trials |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        base, s = r.get("baselines_us") or {}, speedups(r)
        us = lambda b: "-" if not base.get(b) else f"{base[b]:.1f}"  # noqa: E731
        print(f"| {r['dtype']} | " + " | ".join(str(r["key"][n]) for n in KEY_ORDER) +
              f" | {r['time_us']:.1f} | {us('vllm_shipped')} | {us('vllm_default')} | {us('flaggems_default')} | "
              f"{_x(s['vllm_shipped'])} | {_x(s['vllm_default'])} | {_x(s['flaggems_default'])} | "
              f"{_cfg(r['config'])} | {r['trials_used']} |")
    for dtype, d in summary(rows).items():
        sh, un, fg = d["vs_shipped"], d["vs_default_unshipped"], d["vs_flaggems_default"]
        print(f"\n{dtype}, {d['keys']} keys. vLLM ships a config for (E, N, K, top_k): "
              f"{', '.join(map(str, d['shipped_shapes'])) or 'none of them'}.")
        print(summary_line("vLLM shipped", sh, TARGETS["vllm_shipped"], "vLLM ships none of these shapes"))
        print(summary_line("vLLM default where nothing is shipped", un, TARGETS["vllm_default"],
                       "vLLM ships every one of these shapes"))
        print(summary_line("FlagGems default", fg, None, "no FlagGems default timed"))


def summary_line(what: str, s: Mapping[str, Any], target: float | None, none: str) -> str:
    """One summary line; with no key to compare, why not (a geomean of nothing is no number)."""
    if not s["n"]:
        return f"- vs {what}: no key ({none})"
    line = f"- vs {what}: geomean {s['geomean']:.3f}x"
    line += f", min {_x(s['min'])}" if "min" in s else ""
    return line + f" over {s['n']} keys" + (f" (target >= {target}x)" if target else "")


if __name__ == "__main__":
    main()
