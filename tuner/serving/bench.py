"""`tuner bench MODEL --engine vllm`: the same engine, model and requests in three modes.

native   the engine as it is (tuner's plugin installed but TUNER_RUNTIME_DIR unset: it does nothing);
untuned  exactly what `tuner serve MODEL` starts: FlagGems minus the stored exclude list, no configs;
tuned    exactly what `tuner serve MODEL --use-tuned [--route-within R]` starts: the runtime folder
         with every route.
Each mode runs in its own process (`python -m tuner.serving.bench_engine`), one after another on
the same GPU, with the environment `tuner serve` would give the engine; its log is kept and read
for autotunes and Triton JIT compilations.

Served engines (tuner.serving.bench_served): `--engine flagscale` is a server (FlagScale starts
`vllm serve`), so its modes run as `tuner serve --engine flagscale` servers and the requests go over
the OpenAI API. `--engine vllm,flagscale` runs every mode in both engines, both served (vLLM as
`tuner serve --engine vllm` serves), the same requests through the same client, one engine after the
other per mode: a ratio between them measures the launcher, not an in-process vs HTTP difference.
`--served` serves vLLM alone that way.
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
ENGINES = ("vllm", "flagscale")
SERVED_ONLY = ("flagscale",)  # engines tuner reaches as a server only


@dataclass
class BenchRequest:
    model: str
    engine: str = "vllm"  # one engine, or "vllm,flagscale": every mode in each (the first is the reference)
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
    served: bool = False  # vLLM as a server too (flagscale always is; with it in the list, every engine is)
    port: int = 8000  # served engines listen here on 127.0.0.1, one at a time
    route_within: float = 1.0  # the tuned mode's `tuner serve --route-within`
    rounds: int = 1  # every mode this many times, each a fresh engine (bench_stats.over_rounds)

    @property
    def engines(self) -> tuple[str, ...]:
        return tuple(e.strip() for e in self.engine.split(",") if e.strip())

    @property
    def is_served(self) -> bool:
        return self.served or any(e in SERVED_ONLY for e in self.engines)


def label(req: BenchRequest, engine: str, mode: str) -> str:
    """A run's name in the report: the mode, or engine/mode when the bench compares engines."""
    return mode if len(req.engines) == 1 else f"{engine}/{mode}"


def validate(req: BenchRequest) -> None:
    names = req.engines
    bad_engines = [e for e in names if e not in ENGINES]
    if bad_engines or not names or len(set(names)) != len(names):
        raise UserError(f"--engine takes one or more different engines of {', '.join(ENGINES)}, "
                        f"not {req.engine!r}")
    bad = [m for m in req.modes if m not in MODES]
    if bad or not req.modes:
        raise UserError(f"unknown mode {', '.join(bad) or '(none)'}; use one or more of {', '.join(MODES)}")
    if not Path(req.model).is_dir():
        raise UserError(f"model folder {req.model} does not exist (write one with `tuner checkpoint`)")
    for name in ("max_tokens", "prompt_tokens", "output_tokens", "warm_repeats", "rounds"):
        if getattr(req, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be a positive number")
    if req.profile_concurrency <= 0:
        raise UserError("--profile-concurrency must be a positive number")
    if not req.concurrency or min(req.concurrency) <= 0:
        raise UserError("--concurrency takes positive numbers")
    if req.prompt_tokens + req.output_tokens > 4096:
        raise UserError("--prompt-tokens + --output-tokens must fit the engine's 4096-token context")
    from tuner.serving.flow import check_route_within

    check_route_within(req.route_within, "tuned" in req.modes, fix="add tuned to --modes")
    if req.is_served:
        if req.profile:
            raise UserError("--profile needs the in-process engine (vLLM's profiler hooks); served engines "
                            "(flagscale, --served) take no --profile")
        if not 0 < req.port < 65536:
            raise UserError(f"--port {req.port} is not a TCP port")
        from tuner.serving.bench_served import HOST, port_free

        if not port_free(req.port):
            raise UserError(f"port {req.port} on {HOST} is in use; stop what listens there or pass --port")
        for name in names:  # a missing FlagScale or vLLM is refused before any mode runs
            from tuner.serving import engines

            module = engines.engine(name)
            module.command(req.model, req.port, [], host=HOST)
    # what the machine and the folder lack, after the arguments: each mode's engine found it only
    # after starting ("engine process ended with 1 ... Device string must not be empty")
    if not (Path(req.model) / "config.json").is_file():
        raise UserError(f"{req.model} has no config.json: not a model folder (write one with `tuner checkpoint`)")
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"{', '.join(names)} serve on an NVIDIA GPU, and none is visible on this machine")


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
                                    exclude=req.exclude, dry_run=True,
                                    route_within=req.route_within if mode == "tuned" else 1.0))
    env.update(prepared.env)
    return env


def engine_args(req: BenchRequest, mode: str, folder: Path, round_no: int = 1) -> list[str]:
    args = [sys.executable, "-m", "tuner.serving.bench_engine", "--mode", mode, "--model", req.model,
            "--out", str(folder / "result.json"), "--prompt-tokens", str(req.prompt_tokens),
            "--output-tokens", str(req.output_tokens), "--warm-repeats", str(req.warm_repeats),
            "--max-batched-tokens", str(req.max_tokens), "--concurrency", *map(str, req.concurrency)]
    if req.profile and round_no == 1:  # one trace per mode: the first round's
        args += ["--profile-dir", str(folder / "trace"), "--profile-concurrency", str(req.profile_concurrency)]
    return args


def round_order(modes: tuple[str, ...], round_no: int) -> tuple[str, ...]:
    """The modes' order in a round: as given in odd rounds, reversed in even ones (native, tuned,
    tuned, native, ...), so a drift over the rounds (the GPU warming, the host's load) does not
    always favour the same mode."""
    return modes if round_no % 2 else tuple(reversed(modes))


def folder_name(run_label: str, round_no: int) -> str:
    """An engine's folder under --out-dir: `tuned`, `tuned.r2`, `flagscale-tuned` (bench_recover
    reads it back)."""
    name = run_label.replace("/", "-")
    return name if round_no == 1 else f"{name}.r{round_no}"


def run_mode(req: BenchRequest, mode: str, engine: str = "vllm", round_no: int = 1) -> dict[str, Any]:
    """Run one mode of one engine; its result JSON plus what its log says; a failure is recorded.
    Rounds after the first write to folders of their own (`tuned.r2`)."""
    folder = Path(req.out_dir) / folder_name(label(req, engine, mode), round_no)
    folder.mkdir(parents=True, exist_ok=True)
    tag = {"engine_name": engine, "label": label(req, engine, mode), "api": "http" if req.is_served else "llm",
           "route_within": req.route_within if mode == "tuned" else None, "round": round_no}
    if req.is_served:
        from tuner.serving.bench_served import run_served

        t0 = time.perf_counter()
        out = run_served(req, engine, mode, folder)
        log_path = folder / "engine.log"
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        out.update(tag, events=bench_stats.log_events(text.splitlines()), wall_s=time.perf_counter() - t0)
        return out if "error" in out else {**out, "log": str(log_path)}
    env = mode_env(req, mode, folder)
    log_path = folder / "engine.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(engine_args(req, mode, folder, round_no), env=env, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=req.timeout_s)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - t0
    events = bench_stats.log_events(log_path.read_text(errors="replace").splitlines())
    result_path = folder / "result.json"
    if rc != 0 or not result_path.exists():
        return {"mode": mode, **tag, "error": f"engine process ended with {rc}; see {log_path}", "wall_s": wall,
                "events": events}
    return {**json.loads(result_path.read_text()), **tag, "events": events, "wall_s": wall, "log": str(log_path)}


def _label(r: dict) -> str:
    return r.get("label", r["mode"])


def summarise(results: list[dict], reference_engine: str | None = None) -> dict[str, Any]:
    """Rows per (run, concurrency) with ratios to the same engine's native and, when engines are
    compared, to the reference engine (default: the first result's) in the same mode; teacher-forced
    agreement likewise; keyed by run label (the mode alone when one engine ran)."""
    ref_engine = reference_engine or (results[0].get("engine_name", "vllm") if results else "vllm")
    rows: list[dict] = []
    for r in results:
        if "error" not in r:
            tag = {"label": _label(r), "engine": r.get("engine_name", "vllm"), "api": r.get("api", "llm")}
            if r.get("route_within") is not None:  # stored with the row (its metrics): a 1.02 run is not a 1.0 one
                tag["route_within"] = r["route_within"]
            rows += [{**row, **tag} for row in bench_stats.summarise_mode(r, r["events"])]
    rows = bench_stats.with_ratios(rows)
    if len({row["engine"] for row in rows}) > 1:
        rows = bench_stats.engine_ratios(rows, ref_engine)
    ok = [r for r in results if "error" not in r]

    def find(engine: str, mode: str) -> dict | None:
        return next((r for r in ok if r.get("engine_name", "vllm") == engine and r["mode"] == mode), None)

    agree, across = {}, {}
    for r in ok:
        engine = r.get("engine_name", "vllm")
        ref = find(engine, "native")
        if ref is not None and r is not ref:
            agree[_label(r)] = bench_stats.agreement(ref["prompt_logprobs"], r["prompt_logprobs"])
            if ref.get("small_m_logprobs") and r.get("small_m_logprobs"):
                agree[_label(r)]["small_m"] = bench_stats.agreement(ref["small_m_logprobs"], r["small_m_logprobs"])
        other = find(ref_engine, r["mode"])
        if engine != ref_engine and other is not None:  # the same vLLM under two launchers
            across[_label(r)] = {"reference": _label(other),
                                 **bench_stats.agreement(other["prompt_logprobs"], r["prompt_logprobs"])}
    for row in rows:
        row.update({f"agreement_{k}": v for k, v in agree.get(row["label"], {}).items() if k != "small_m"})
        small = agree.get(row["label"], {}).get("small_m", {})
        row.update({f"agreement_small_m_{k}": v for k, v in small.items()})
    errors = {_label(r): r["error"] for r in results if "error" in r}
    return {"runs": rows, "agreement": agree, "engine_agreement": across, "errors": errors,
            "reference_engine": ref_engine,
            "engine": {_label(r): r.get("engine") for r in ok},
            "jit_kernels": {_label(r): r["events"]["jit_kernels"] for r in results},
            "router_calls": {_label(r): r["events"].get("router_calls") for r in results},
            "moe_configs": {_label(r): r["events"].get("moe_configs") for r in results}}


def write_modes(out: Path, rounds: list[list[dict]]) -> None:
    """modes.json: every engine finished so far, its logprobs left in its own result.json
    (`tuner bench-report` reads both back when the bench never reported). Replaced whole, never
    written in place: a bench killed mid-write keeps the previous list."""
    tmp = out / "modes.json.tmp"
    tmp.write_text(json.dumps([{k: v for k, v in r.items() if k != "prompt_logprobs"}
                               for rs in rounds for r in rs], default=str))
    os.replace(tmp, out / "modes.json")


def report_of(rounds: list[list[dict]], reference_engine: str | None = None) -> dict[str, Any]:
    """The report of a bench's rounds (each a list of run_mode results): the first round's
    summary, its tok/s and ratios the medians over the rounds when there are several."""
    report = summarise(rounds[0], reference_engine)  # the first round's modes are in the given order
    if len(rounds) > 1:
        bench_stats.over_rounds(report, [summarise(rs, reference_engine) for rs in rounds])
    return report


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
    """Run every mode (each in its own engine process), summarise, write bench.json, store. With
    rounds, every mode again in a fresh engine per round: one engine pair's ratio carries the
    between-engine spread (~2-2.5% at 64 requests on the H200 with unchanged cuBLAS kernels,
    results/vllm/h200_run8), which only repeats over engine starts can show."""
    validate(req)
    out = Path(req.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rounds: list[list[dict]] = []
    for round_no in range(1, req.rounds + 1):
        rounds.append([])
        for mode in round_order(req.modes, round_no):
            for engine in req.engines:  # engines side by side per mode: the runs a ratio compares are close in time
                if on_mode:
                    of = f" (round {round_no}/{req.rounds})" if req.rounds > 1 else ""
                    on_mode(label(req, engine, mode) + of)
                rounds[-1].append(run_mode(req, mode, engine, round_no))
                write_modes(out, rounds)  # what is finished is on disk even if a later engine is killed
    report = report_of(rounds, req.engines[0])
    from db import shown_url

    report["request"] = {k: v for k, v in vars(req).items() if k != "extra_env"}
    if req.db_url:  # the report is printed and written: never a password
        report["request"]["db_url"] = shown_url(req.db_url)
    if report["runs"]:
        report["bench_id"] = store(req, report)
    (out / "bench.json").write_text(json.dumps(report, indent=1, default=str))
    return report
