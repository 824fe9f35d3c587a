"""The statistics of `tuner bench`: pure functions of what each mode's process recorded (its JSON
and its log), so they are tested on recorded runs without a GPU."""
from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# Units (what the logs allow): `autotunes` counts autotuning lines, i.e. Triton's one line per config
# benchmarked plus its per-key summaries (0 is the target either way); `jit_compiles` counts vLLM
# 0.26's JIT-monitor warnings, which it logs once per kernel name and process, so it is the number of
# distinct kernels compiled while serving, not of compilations.
AUTOTUNE_LINE = re.compile(r"Autotuning (kernel|for)|autotuning kernel", re.I)
JIT_LINE = re.compile(r"Triton kernel JIT compilation during inference: *([A-Za-z_]\w*)")
# tuner's GEMM router, at engine exit (tuner.inject.gemm_router.hits_line)
# older lines lack the persistent and stream-K counts (before those kernels) and the eager count
ROUTER_LINE = re.compile(r"tuner router: GEMM calls dispatched since start: FlagGems (\d+), split-K (\d+), "
                         r"(?:persistent (\d+), )?(?:stream-K (\d+), )?native (\d+)"
                         r"(?: \(of which routed keys kept native on the eager path: (\d+)\))?")


def percentile(xs: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation; None for no samples."""
    if not xs:
        return None
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def log_events(lines: Iterable[str]) -> dict[str, Any]:
    """Autotune benchmarks and Triton JIT compilations seen in an engine log."""
    autotunes, jit, router = 0, {}, None
    for line in lines:
        if AUTOTUNE_LINE.search(line):
            autotunes += 1
        m = JIT_LINE.search(line)
        if m:
            jit[m.group(1)] = jit.get(m.group(1), 0) + 1
        r = ROUTER_LINE.search(line)
        if r:  # one line per engine process that installed the router (workers under TP): summed
            router = router or {"flaggems": 0, "splitk": 0, "native": 0}
            for k, v in zip(("flaggems", "splitk", "persistent", "streamk", "native", "eager_native"), r.groups()):
                if v is not None:
                    router[k] = router.get(k, 0) + int(v)
    return {"autotunes": autotunes, "jit_compiles": sum(jit.values()), "jit_kernels": jit, "router_calls": router}


def summarise_mode(result: Mapping[str, Any], events: Mapping[str, Any]) -> list[dict]:
    """One row per concurrency: cold and warm output tokens/s, TTFT and TPOT percentiles (warm)."""
    rows = []
    by_c: dict[int, list[Mapping]] = {}
    for b in result["batches"]:
        if b["phase"] in ("cold", "warm"):
            by_c.setdefault(int(b["concurrency"]), []).append(b)
    for c, batches in sorted(by_c.items()):
        cold = [b for b in batches if b["phase"] == "cold"]
        warm = [b for b in batches if b["phase"] == "warm"] or cold
        ttft = [x for b in warm for x in b["ttft_ms"]]
        tpot = [x for b in warm for x in b["tpot_ms"]]
        warm_tps = [b["output_tok_s"] for b in warm]
        rows.append({
            "mode": result["mode"], "concurrency": c,
            "output_tok_s": statistics.median(warm_tps),
            "output_tok_s_cold": cold[0]["output_tok_s"] if cold else None,
            "ttft_ms_p50": percentile(ttft, 50), "ttft_ms_p99": percentile(ttft, 99),
            "tpot_ms_p50": percentile(tpot, 50), "tpot_ms_p99": percentile(tpot, 99),
            "start_s": result.get("start_s"),
            "autotunes": events.get("autotunes"), "jit_compiles": events.get("jit_compiles"),
        })
    return rows


def agreement(reference: Sequence[Mapping], other: Sequence[Mapping]) -> dict[str, Any]:
    """Teacher-forced agreement of two modes on the same prompts: the share of positions whose
    top-1 token is the same, and the largest |difference| of the actual tokens' logprobs."""
    same = total = 0
    worst = 0.0
    for a, b in zip(reference, other):
        for x, y in zip(a["top1"], b["top1"]):
            same += x == y
            total += 1
        for x, y in zip(a["actual_logprob"], b["actual_logprob"]):
            if x is not None and y is not None:
                worst = max(worst, abs(x - y))
    return {"positions": total, "top1_agreement": same / total if total else None,
            "max_abs_dlogprob": worst if total else None}


def with_ratios(rows: list[dict], reference_mode: str = "native") -> list[dict]:
    """Adds `vs_native` (output tokens/s over the same engine's native mode at the same concurrency)."""
    ref = {(r.get("engine"), r["concurrency"]): r["output_tok_s"] for r in rows if r["mode"] == reference_mode}
    out = []
    for r in rows:
        base = ref.get((r.get("engine"), r["concurrency"]))
        out.append({**r, "vs_native": r["output_tok_s"] / base if base else None})
    return out


def engine_ratios(rows: list[dict], reference_engine: str) -> list[dict]:
    """Adds `vs_engine` to the rows of the other engines: output tokens/s over the reference engine's
    in the same mode at the same concurrency (`reference_engine` names it); None where it has no row."""
    ref = {(r["mode"], r["concurrency"]): r["output_tok_s"] for r in rows if r.get("engine") == reference_engine}
    out = []
    for r in rows:
        if r.get("engine") == reference_engine:
            out.append(dict(r))
            continue
        base = ref.get((r["mode"], r["concurrency"]))
        out.append({**r, "vs_engine": r["output_tok_s"] / base if base else None,
                    "reference_engine": reference_engine})
    return out
