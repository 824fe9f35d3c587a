"""`tuner profile --engine vllm`: where the GPU time goes inside the serving engine, per mode.

Each mode (native, untuned, tuned) runs in its own engine process with the environment `tuner serve`
gives it (tuner.serving.bench runs it), one request of 512 prompt + 64 output tokens goes through
vLLM's own torch.profiler hooks inside the worker, and the trace is read by
tuner.profiling.engine_trace: kernels ranked by GPU time with their class (Triton: Inductor /
FlagGems / tuner / other; cuBLAS, attention, ...), the Triton share, GPU idle per decode step and the
ops launched eagerly outside the CUDA graphs, and the GEMM keys it met. Each mode is stored as a
profile run (workloads "vllm:<mode>"): its hot-op rows are the top kernels (op = the kernel's
class), then the GEMM keys (op aten::mm / aten::addmm, tunable mm / addmm), so `tune --from-profile`
takes them: the eager keys timed, hottest first, then the keys replayed from CUDA graphs at every
capture size, by M. A graph replay records no operand shapes: those keys are the (N, K) seen at
prefill crossed with the engine's capture sizes, not observed calls (calls 0, time 0).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.profiling import engine_trace
from tuner.serving import bench
from tuner.serving.bench_engine import PROFILE_OUTPUT_TOKENS


@dataclass
class EngineProfileRequest:
    model: str
    engine: str = "vllm"
    modes: tuple[str, ...] = ("native", "tuned")
    out_dir: str = "engine_profile"
    db_url: str | None = None
    max_tokens: int = 4096
    exclude: list[str] | None = None
    allow_foreign: bool = False
    top: int = 15
    timeout_s: float = 900.0
    concurrency: int = 1  # requests in the profiled batch: decode GEMMs run at M = this (padded)

    def as_bench(self) -> bench.BenchRequest:
        return bench.BenchRequest(model=self.model, engine=self.engine, modes=self.modes, out_dir=self.out_dir,
                                  db_url=self.db_url, max_tokens=self.max_tokens, concurrency=(1,),
                                  warm_repeats=1, profile=True, profile_concurrency=self.concurrency,
                                  exclude=self.exclude,
                                  allow_foreign=self.allow_foreign, timeout_s=self.timeout_s)


def hot_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A summary's top kernels as hot-op rows (rank order): op = class, kernel = name; then its GEMM
    keys: op = the aten op, kernel = where it ran ("eager" or "cuda graph (untimed)")."""
    total = summary["kernel_ms"] or 1.0
    rows = [{"op": k["class"], "shapes": "[]", "dtype": "", "kernel": k["name"], "calls": k["calls"],
             "total_us": k["gpu_ms"] * 1e3, "share": k["gpu_ms"] / total, "tunable": "", "key": None,
             "predicted_gain_us": None} for k in summary["top_kernels"]]
    for g in summary.get("gemm_keys", []):
        rows.append({"op": f"aten::{g['op']}", "shapes": json.dumps([[g["M"], g["K"]], [g["K"], g["N"]]]),
                     "dtype": g["dtype"], "kernel": "eager" if g["place"] == "eager" else "cuda graph (untimed)",
                     "calls": g["calls"], "total_us": g["gpu_us"], "share": g["gpu_us"] / (total * 1e3),
                     "tunable": g["op"], "key": {"M": g["M"], "N": g["N"], "K": g["K"]}, "predicted_gain_us": None})
    return rows


def store(db_url: str | None, env, engine: str, model: str, mode: str, summary: Mapping[str, Any]) -> int:
    """One profile run for one mode; returns its id."""
    from db import profile_queries as pq
    from db import queries
    from tuner.store import open_db

    options = {k: summary[k] for k in ("triton_share", "share_by_class", "idle_us_per_step", "steps",
                                       "gpu_busy_ms", "span_ms", "graph_launches", "eager_ops")}
    options["idle_causes"] = summary.get("idle_causes", [])  # (summaries written before it have none)
    db = open_db(db_url)
    try:
        with db.session() as s:
            env_row = queries.get_or_create_environment(s, env.digest(), env.as_dict())
            run = pq.add_profile_run(s, env_row, hot_rows(summary), workloads=f"{engine}:{mode}", scale=1.0,
                                     dtype="bf16", device="cuda", time_source="cuda", flaggems=mode != "native",
                                     options={"engine": engine, "mode": mode, **options},
                                     model={"path": model}, trace_path=summary.get("trace"),
                                     total_us=summary["kernel_ms"] * 1e3, overhead_ratio=None)
            s.commit()
            return run.id
    finally:
        db.dispose()


def profile_engine(req: EngineProfileRequest, on_mode: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Profile every mode; a mode that fails is reported with its error, the others stored."""
    from tuner import fingerprint

    breq = req.as_bench()
    bench.validate(breq)
    names, env, out = engine_trace.flaggems_kernel_names(), fingerprint.collect("cuda"), {}
    for mode in req.modes:
        if on_mode:
            on_mode(mode)
        result = bench.run_mode(breq, mode)
        if "error" in result:
            out[mode] = {"error": result["error"], "events": result["events"]}
            continue
        sizes = (result.get("engine") or {}).get("capture_sizes")
        summary = engine_trace.summarise_dir(Path(req.out_dir) / mode / "trace", PROFILE_OUTPUT_TOKENS, names,
                                             req.top, capture_sizes=sizes)
        summary["events"] = result["events"]
        summary["profile_run_id"] = store(req.db_url, env, req.engine, req.model, mode, summary)
        out[mode] = summary
    (Path(req.out_dir) / "profiles.json").write_text(json.dumps(out, indent=1, default=str))
    return out
