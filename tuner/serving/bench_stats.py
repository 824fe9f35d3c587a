"""The statistics of `tuner bench`: pure functions of what each mode's process recorded (its JSON
and its log), so they are tested on recorded runs without a GPU."""
from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tuner.inject.plugin import MOE_FOLDER  # the runtime folder's subfolder of MoE configs

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
                         r"(?: \(of which routed keys kept native on the eager path: (\d+)"
                         r"(?:, refused by tuner's kernel: (\d+))?\))?")
# vLLM's fused-MoE config lookup (get_moe_configs in model_executor/layers/fused_moe/fused_moe.py): the
# file it read (info_once: once per file and process, first rank only), or that none was found (the
# paths it tried, comma-joined) and the kernel's default config serves. The same text in the installed
# vLLM 0.33 and in stored vLLM sources before and after VLLM_TUNED_CONFIG_FOLDER (v0.26.0 itself not read)
MOE_CONFIG_LINE = re.compile(r"Using configuration from (.+?) for MoE layer\.")
MOE_DEFAULT_LINE = re.compile(r"Using default MoE config\. Performance might be sub-optimal! Config file not found at")
MOE_DEFAULT = "default"  # moe_configs' key for the default-config lines


def percentile(xs: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation; None for no samples."""
    if not xs:
        return None
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def moe_source(key: str) -> str:
    """Which config a `moe_configs` key is: tuner's runtime folder, vLLM's shipped configs, the
    kernel's default (no file found), or another file (a VLLM_TUNED_CONFIG_FOLDER not tuner's)."""
    if key == MOE_DEFAULT:
        return "default"
    parts = key.replace("\\", "/").split("/")
    if len(parts) >= 2 and parts[-2] == MOE_FOLDER:
        return "tuner"
    if len(parts) >= 3 and parts[-3:-1] == ["fused_moe", "configs"]:
        return "vllm"
    return "other"


def log_events(lines: Iterable[str]) -> dict[str, Any]:
    """Autotune benchmarks, Triton JIT compilations, tuner's router counts and vLLM's fused-MoE
    config lines (`moe_configs`: lines per file read, MOE_DEFAULT for no file; None without a line)
    seen in an engine log."""
    autotunes, jit, router, moe = 0, {}, None, None
    for line in lines:
        if AUTOTUNE_LINE.search(line):
            autotunes += 1
        m = JIT_LINE.search(line)
        if m:
            jit[m.group(1)] = jit.get(m.group(1), 0) + 1
        r = ROUTER_LINE.search(line)
        if r:  # one line per engine process that installed the router (workers under TP): summed
            router = router or {"flaggems": 0, "splitk": 0, "native": 0}
            for k, v in zip(("flaggems", "splitk", "persistent", "streamk", "native", "eager_native", "refused"),
                            r.groups()):
                if v is not None:
                    router[k] = router.get(k, 0) + int(v)
        m = MOE_CONFIG_LINE.search(line)
        key = m.group(1) if m else MOE_DEFAULT if MOE_DEFAULT_LINE.search(line) else None
        if key is not None:  # vLLM logs each file once per process (and config lookup): counted per file
            moe = moe if moe is not None else {}
            moe[key] = moe.get(key, 0) + 1
    return {"autotunes": autotunes, "jit_compiles": sum(jit.values()), "jit_kernels": jit, "router_calls": router,
            "moe_configs": moe}


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
            # each warm repeat: the spread says how far one mode's runs decide a few-% gap (H200,
            # session 9: FlagScale's 64-request repeats 5110 and 5395 tok/s, vLLM's 5447 and 5673)
            "output_tok_s_warm": warm_tps if warm is not cold else [],
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


def over_rounds(report: dict[str, Any], per_round: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A bench run in rounds (each mode a fresh engine per round; `per_round`: each round's own
    summary, ratios within the round): each row's output tokens/s and ratios become the median over
    the rounds, the rounds' values kept beside them (`output_tok_s_rounds`, `vs_native_rounds`,
    `vs_engine_rounds`: in round order, a round where the mode failed left out). Latency, start time
    and agreement stay the first round's (`report`, changed in place and returned); the later rounds'
    failures join `errors` as "mode (round N)". A mode that failed in the first round has its row
    from the first round it ran."""
    def rows_of(summary: Mapping[str, Any]) -> dict[tuple, Mapping]:
        return {(r["label"], r["concurrency"]): r for r in summary["runs"]}

    rounds = [rows_of(s) for s in per_round]
    have = set(rows_of(report))
    for r in rounds[1:]:  # a mode that failed in the first round: its row from the first round it ran
        for key, row in r.items():
            if key not in have:
                report["runs"].append(dict(row))
                have.add(key)
    for row in report["runs"]:
        key = (row["label"], row["concurrency"])
        seen = [r[key] for r in rounds if key in r]
        for field in ("output_tok_s", "vs_native", "vs_engine"):
            values = [r[field] for r in seen if r.get(field) is not None]
            if values:
                row[f"{field}_rounds"] = values
                row[field] = statistics.median(values)
    for n, summary in enumerate(per_round[1:], start=2):
        report["errors"].update({f"{name} (round {n})": err for name, err in summary.get("errors", {}).items()})
    report["rounds"] = len(per_round)
    return report


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
