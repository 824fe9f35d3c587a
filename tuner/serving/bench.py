"""`tuner bench MODEL --engine vllm`: the same engine, model and requests in three modes.

native   the engine as it is (tuner's plugin installed but TUNER_RUNTIME_DIR unset: it does nothing);
untuned  exactly what `tuner serve MODEL` starts: FlagGems minus the stored exclude list, no configs;
tuned    exactly what `tuner serve MODEL --use-tuned` starts: the runtime folder with every route.
Each mode runs in its own process (`python -m tuner.serving.bench_engine`), one after another on
the same GPU, with the environment `tuner serve` would give the engine; its log is kept and read
for autotunes and Triton JIT compilations.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tuner.errors import UserError
from tuner.serving import bench_stats

MODES = ("native", "untuned", "tuned")


@dataclass
class BenchRequest:
    model: str
    engine: str = "vllm"
    modes: tuple[str, ...] = MODES
    out_dir: str = "bench"
    db_url: str | None = None
    max_tokens: int = 4096  # the engine's max_num_batched_tokens and tuner's seeding bound: one setting
    prompt_tokens: int = 512
    output_tokens: int = 128
    concurrency: tuple[int, ...] = (1, 64)
    warm_repeats: int = 2
    profile: bool = False
    profile_concurrency: int = 1  # requests in the profiled batch (64: decode GEMMs at M = 64)
    exclude: list[str] | None = None
    allow_foreign: bool = False
    timeout_s: float = 900.0
    extra_env: dict[str, str] = field(default_factory=dict)


def validate(req: BenchRequest) -> None:
    if req.engine != "vllm":
        raise UserError(f"tuner bench runs the vllm engine only, not {req.engine!r}")
    bad = [m for m in req.modes if m not in MODES]
    if bad or not req.modes:
        raise UserError(f"unknown mode {', '.join(bad) or '(none)'}; use one or more of {', '.join(MODES)}")
    if not Path(req.model).is_dir():
        raise UserError(f"model folder {req.model} does not exist (write one with `tuner checkpoint`)")
    for name in ("max_tokens", "prompt_tokens", "output_tokens", "warm_repeats"):
        if getattr(req, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be a positive number")
    if req.profile_concurrency <= 0:
        raise UserError("--profile-concurrency must be a positive number")
    if not req.concurrency or min(req.concurrency) <= 0:
        raise UserError("--concurrency takes positive numbers")
    if req.prompt_tokens + req.output_tokens > 4096:
        raise UserError("--prompt-tokens + --output-tokens must fit the engine's 4096-token context")


def mode_env(req: BenchRequest, mode: str, folder: Path) -> dict[str, str]:
    """The environment `tuner serve` gives the engine for this mode (native: tuner adds nothing)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TUNER_RUNTIME_DIR", "FLAGGEMS_DB_URL",
                                                            "VLLM_TUNED_CONFIG_FOLDER")}
    env.update(req.extra_env)
    # every mode spawns its engine core (tuner's plugin makes vLLM do so): start times compare
    env.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    if mode == "native":
        return env
    from tuner.serving.flow import ServeRequest, prepare

    prepared = prepare(ServeRequest(model=req.model, engine="vllm", use_tuned=mode == "tuned",
                                    db_url=req.db_url, allow_foreign=req.allow_foreign,
                                    max_tokens=req.max_tokens, runtime_dir=str(folder / "runtime"),
                                    exclude=req.exclude, dry_run=True))
    env.update(prepared.env)
    return env


def engine_args(req: BenchRequest, mode: str, folder: Path) -> list[str]:
    args = [sys.executable, "-m", "tuner.serving.bench_engine", "--mode", mode, "--model", req.model,
            "--out", str(folder / "result.json"), "--prompt-tokens", str(req.prompt_tokens),
            "--output-tokens", str(req.output_tokens), "--warm-repeats", str(req.warm_repeats),
            "--max-batched-tokens", str(req.max_tokens), "--concurrency", *map(str, req.concurrency)]
    if req.profile:
        args += ["--profile-dir", str(folder / "trace"), "--profile-concurrency", str(req.profile_concurrency)]
    return args


def run_mode(req: BenchRequest, mode: str, on_line: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one mode's process; its result JSON plus what its log says; a failure is recorded."""
    folder = Path(req.out_dir) / mode
    folder.mkdir(parents=True, exist_ok=True)
    env = mode_env(req, mode, folder)
    log_path = folder / "engine.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(engine_args(req, mode, folder), env=env, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=req.timeout_s)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - t0
    events = bench_stats.log_events(log_path.read_text(errors="replace").splitlines())
    result_path = folder / "result.json"
    if rc != 0 or not result_path.exists():
        return {"mode": mode, "error": f"engine process ended with {rc}; see {log_path}", "wall_s": wall,
                "events": events}
    return {**json.loads(result_path.read_text()), "events": events, "wall_s": wall, "log": str(log_path)}


def summarise(results: list[dict]) -> dict[str, Any]:
    rows: list[dict] = []
    for r in results:
        if "error" not in r:
            rows += bench_stats.summarise_mode(r, r["events"])
    rows = bench_stats.with_ratios(rows)
    ref = next((r for r in results if r["mode"] == "native" and "error" not in r), None)
    agree = {}
    for r in results:
        if ref is not None and r is not ref and "error" not in r:
            agree[r["mode"]] = bench_stats.agreement(ref["prompt_logprobs"], r["prompt_logprobs"])
            if ref.get("small_m_logprobs") and r.get("small_m_logprobs"):
                agree[r["mode"]]["small_m"] = bench_stats.agreement(ref["small_m_logprobs"], r["small_m_logprobs"])
    for row in rows:
        row.update({f"agreement_{k}": v for k, v in agree.get(row["mode"], {}).items() if k != "small_m"})
        small = agree.get(row["mode"], {}).get("small_m", {})
        row.update({f"agreement_small_m_{k}": v for k, v in small.items()})
    errors = {r["mode"]: r["error"] for r in results if "error" in r}
    return {"runs": rows, "agreement": agree, "errors": errors,
            "engine": {r["mode"]: r.get("engine") for r in results if "error" not in r},
            "jit_kernels": {r["mode"]: r["events"]["jit_kernels"] for r in results},
            "router_calls": {r["mode"]: r["events"].get("router_calls") for r in results}}


def store(req: BenchRequest, report: dict[str, Any]) -> str:
    """Every (mode, concurrency) row in the database under one bench id; returns the id."""
    from db import bench_queries, queries
    from tuner import fingerprint
    from tuner.store import open_db

    env = fingerprint.collect("cuda")
    bench_id = time.strftime("bench-%Y%m%d-%H%M%S")
    db = open_db(req.db_url)
    try:
        with db.session() as s:
            row = queries.get_or_create_environment(s, env.digest(), env.as_dict())
            bench_queries.add_bench(s, environment_id=row.id, bench_id=bench_id, engine=req.engine,
                                    model=req.model, rows=report["runs"])
            s.commit()
    finally:
        db.dispose()
    return bench_id


def bench(req: BenchRequest, on_mode: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every mode (each in its own engine process), summarise, write bench.json, store."""
    validate(req)
    out = Path(req.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for mode in req.modes:
        if on_mode:
            on_mode(mode)
        results.append(run_mode(req, mode))
        # what is finished is on disk even if a later mode is killed
        (out / "modes.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "prompt_logprobs"}
                                                     for r in results], default=str))
    report = summarise(results)
    from db import shown_url

    report["request"] = {k: v for k, v in vars(req).items() if k != "extra_env"}
    if req.db_url:  # the report is printed and written: never a password
        report["request"]["db_url"] = shown_url(req.db_url)
    if report["runs"]:
        report["bench_id"] = store(req, report)
    (out / "bench.json").write_text(json.dumps(report, indent=1, default=str))
    return report
