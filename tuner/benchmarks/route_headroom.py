"""How much GPU time tuned GEMM routes could save in an engine, at most, from what a tuner database
measured: per eager GEMM key of a profiled native engine, its GPU time there and the database's best
Triton / cuBLAS time on the same key; what every key on its faster side would save (each key's
recorded ratio applied to its engine time, the "oracle" routing), beside what a profiled tuned
engine took per key ("tuned ran": the native engine's kernels or others), and the kernel time a
throughput target needs removed.

usage: python -m tuner.benchmarks.route_headroom PROFILES_JSON DB [--target 1.05]
PROFILES_JSON: {mode: profile} as vllm_h200.sh writes it (profiles_*.json; tuner.profiling.engine_trace),
with a "native" profile and optionally a "tuned" one; DB: a tuner database (path or URL).

Why: the c=64 serving target (issue 12: >= 1.05x native) asks ~50 ms less GPU time of a profiled
batch of ~1050 ms (results/vllm/h200_run9); routing can only remove what the kernels' recorded gains
allow. Kernels inside CUDA graphs (decode) are not attributed to GEMM keys by the profile (their
time is counted in the kernel total only), so the bound covers the eager GEMMs (prefill, lm_head).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tuner.inject.gemm_router import PREFILL_M  # (imports no torch)


def best_ratios(url: str) -> dict[tuple, float]:
    """(op, M, N, K, dtype) -> best Triton time / cuBLAS time of the database's records in
    nn.Linear's layout (what an engine calls), for mm and addmm. `url`: a URL or a SQLite path, read
    only (a missing or foreign database raises db.DatabaseUnusable; nothing is created or migrated)."""
    from db.queries import stored_records

    out = {}
    for r in stored_records(url):
        key = linear_key(r)
        if key is not None and r.get("time_us") and r.get("native_us"):
            out[key] = r["time_us"] / r["native_us"]
    return out


def linear_key(record: dict) -> tuple | None:
    """(op, M, N, K, dtype) of an mm / addmm record in nn.Linear's layout (B = weight.t(), BT=1, the
    way an engine calls it), else None (other layouts, other ops' keys)."""
    k = record["key"]
    if record["kernel"] not in ("mm", "addmm") or int(k.get("BT", 1)) != 1:
        return None
    return record["kernel"], int(k["M"]), int(k["N"]), int(k["K"]), record["dtype"]


def _eager(profile: dict) -> dict[tuple, dict]:
    return {(g["op"], g["M"], g["N"], g["K"], g["dtype"]): g for g in profile.get("gemm_keys", [])
            if g.get("place") == "eager" and g.get("gpu_us")}


def prefill_rows(profile: dict, min_m: int) -> dict[tuple, tuple[int, float]]:
    """(op, N, K, dtype) -> (token rows, GPU us) of a profile's eager GEMMs at M >= min_m: the two
    engines of a bench split a batch's tail into other chunks (run 11: 3305 + 1024 tokens native,
    2297 + 2048 tuned), so per-key rows miss them; per token row they compare."""
    out: dict[tuple, tuple[int, float]] = {}
    for (op, m, n, k, dtype), g in _eager(profile).items():
        if m >= min_m:
            rows, us = out.get((op, n, k, dtype), (0, 0.0))
            out[(op, n, k, dtype)] = (rows + m * int(g.get("calls", 0)), us + g["gpu_us"])
    return out


def per_row(profiles: dict, min_m: int) -> list[dict]:
    """Per layer (op, N, K), largest native time first: us a token row in each engine at M >= min_m."""
    native = prefill_rows(profiles["native"], min_m)
    tuned = prefill_rows(profiles["tuned"], min_m) if profiles.get("tuned") else {}
    out = []
    for layer, (rows, us) in sorted(native.items(), key=lambda kv: -kv[1][1]):
        t_rows, t_us = tuned.get(layer, (0, 0.0))
        nat = us / rows if rows else None
        tun = t_us / t_rows if t_rows else None
        out.append({"layer": layer, "native_rows": rows, "native_us_per_row": nat, "tuned_rows": t_rows,
                    "tuned_us_per_row": tun, "ratio": tun / nat if tun and nat else None})
    return out


def _same_kernels(a: dict, b: dict) -> bool | None:
    """Whether two engines' ops on a key launched the same kernels (None: a profile without names)."""
    if "kernels" not in a or "kernels" not in b:
        return None
    return set(a["kernels"]) == set(b["kernels"])


def headroom(profiles: dict, ratios: dict[tuple, float], target: float = 1.05, prefill_m: int = PREFILL_M) -> dict:
    """Rows per eager GEMM key of the native profile (largest first) and the totals, in ms; with a
    tuned profile, the prefill GEMMs (M >= prefill_m: the router's PREFILL_M) per token row too."""
    native = profiles["native"]
    tuned = _eager(profiles["tuned"]) if profiles.get("tuned") else {}
    rows, saved = [], 0.0
    for key, g in sorted(_eager(native).items(), key=lambda kv: -kv[1]["gpu_us"]):
        us, ratio = g["gpu_us"], ratios.get(key)
        gain = us * (1 - min(1.0, ratio)) if ratio is not None else 0.0
        saved += gain
        rows.append({"key": key, "native_ms": us / 1e3, "db_ratio": ratio, "oracle_saved_ms": gain / 1e3,
                     "tuned_ms": tuned[key]["gpu_us"] / 1e3 if key in tuned else None,
                     "same_kernels": _same_kernels(g, tuned[key]) if key in tuned else None})
    kernel = native["kernel_ms"]
    eager = sum(r["native_ms"] for r in rows)
    need = kernel * (1 - 1 / target)
    # where both engines ran the same kernels, what the tuned engine took on them is the engines'
    # own difference (clocks, power, neighbours), not a kernel's: the yardstick for "x eng"
    same = [r for r in rows if r["same_kernels"]]
    same_ratio = sum(r["tuned_ms"] for r in same) / sum(r["native_ms"] for r in same) if same else None
    return {"rows": rows, "kernel_ms": kernel, "eager_gemm_ms": eager, "oracle_saved_ms": saved / 1e3,
            "same_kernel_keys": len(same), "same_kernel_ms": sum(r["native_ms"] for r in same),
            "same_kernel_ratio": same_ratio,
            "oracle_kernel_ratio": kernel / (kernel - saved / 1e3), "target": target, "needed_ms": need,
            "eager_gemm_ratio_needed": (eager - need) / eager if eager else None,
            "tuned_kernel_ms": profiles["tuned"]["kernel_ms"] if profiles.get("tuned") else None,
            "prefill_m": prefill_m, "per_row": per_row(profiles, prefill_m) if profiles.get("tuned") else []}


def _num(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def lines(h: dict, top: int = 12) -> list[str]:
    """The report, 80 columns."""
    out = [f"{'key (op M,N,K)':<26} {'native ms':>9} {'tuned ms':>9} {'x eng':>6} {'x db':>6} {'oracle':>7} "
           f"{'tuned ran':>9}"]
    ran = {True: "same", False: "other", None: "-"}
    for r in h["rows"][:top]:
        op, m, n, k, _ = r["key"]
        eng = r["tuned_ms"] / r["native_ms"] if r["tuned_ms"] is not None else None
        out.append(f"{op + ' ' + f'{m},{n},{k}':<26} {r['native_ms']:9.1f} {_num(r['tuned_ms'], '.1f'):>9} "
                   f"{_num(eng, '.3f'):>6} {_num(r['db_ratio'], '.3f'):>6} {r['oracle_saved_ms']:7.1f} "
                   f"{ran[r['same_kernels']]:>9}")
    if len(h["rows"]) > top:
        out.append(f"... {len(h['rows']) - top} smaller keys")
    out += [
        f"kernel time {h['kernel_ms']:.1f} ms (native engine)"
        + (f", {h['tuned_kernel_ms']:.1f} tuned" if h["tuned_kernel_ms"] is not None else "")
        + f"; eager GEMMs {h['eager_gemm_ms']:.1f} ms",
        f"every eager key on its recorded faster side: {h['oracle_saved_ms']:.1f} ms less, kernel time "
        f"{1 / h['oracle_kernel_ratio']:.3f}x",
        f"{h['target']:.2f}x needs {h['needed_ms']:.1f} ms less kernel time; from the eager GEMMs alone:",
        "  at " + _num(h["eager_gemm_ratio_needed"], ".3f") + "x of native on average",
        "(in-graph GEMMs, e.g. decode, are not attributed per key by the profile)",
    ]
    if h.get("same_kernel_ratio") is not None:
        out.append(f"the same kernels in both engines ({h['same_kernel_keys']} keys, {h['same_kernel_ms']:.1f} ms "
                   f"native): tuned engine {h['same_kernel_ratio']:.3f}x")
    if h.get("per_row"):  # whatever chunks each engine's scheduler cut the batch into
        out.append(f"prefill GEMMs per token row (M >= {h['prefill_m']}): rows and us a row per engine")
        out.append(f"  {'layer (op N,K)':<22} {'native':>8} {'tuned':>8} {'native':>8} {'tuned':>8} {'x':>6}")
        for r in h["per_row"][:6]:
            op, n, k, _ = r["layer"]
            out.append(f"  {op + ' ' + f'{n},{k}':<22} {r['native_rows']:>8} {r['tuned_rows']:>8} "
                       f"{_num(r['native_us_per_row'], '.4f'):>8} {_num(r['tuned_us_per_row'], '.4f'):>8} "
                       f"{_num(r['ratio'], '.3f'):>6}")
        if len(h["per_row"]) > 6:
            out.append(f"  ... {len(h['per_row']) - 6} smaller layers")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tuner.benchmarks.route_headroom", description=__doc__.split("\n\n")[0])
    p.add_argument("profiles", help="profiles_*.json: {mode: engine profile}, with a native one")
    p.add_argument("db", help="the tuner database the tuned engine served (path or URL)")
    p.add_argument("--target", type=float, default=1.05, help="throughput ratio to size (default 1.05)")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    a = p.parse_args(argv)
    if a.target <= 1:
        p.error("--target must be above 1 (a speed-up over native)")
    path = Path(a.profiles)
    if not path.is_file():
        p.error(f"no profiles file {path}")
    profiles = json.loads(path.read_text())
    if not isinstance(profiles, dict) or not profiles.get("native"):
        p.error(f"{path} holds no native engine profile")
    from db import DatabaseUnusable

    try:
        ratios = best_ratios(a.db)
    except DatabaseUnusable as e:
        p.error(str(e))
    h = headroom(profiles, ratios, a.target)
    if a.json:
        print(json.dumps({**h, "rows": [{**r, "key": list(r["key"])} for r in h["rows"]]}, indent=1))
    else:
        print("\n".join(lines(h)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
