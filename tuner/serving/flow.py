"""`tuner serve`: prepare the runtime folder, set the environment, launch the engine, forward
signals. The same runtime hook (tuner.inject.plugin.register) runs inside every engine process:
through the `vllm.general_plugins` entry point for vLLM and FlagScale (which wraps vLLM), and
through a `sitecustomize` module for transformers' own server (tuner.serving.engines, one module
per engine)."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tuner.errors import UserError
from tuner.serving import engines
from tuner.serving.exclude import exclusion_error

DEFAULT_RUNTIME = Path("~/.tuner/runtime")


@dataclass
class ServeRequest:
    model: str
    engine: str = "vllm"
    use_tuned: bool = False
    engine_args: list[str] = field(default_factory=list)
    db_url: str | None = None
    allow_foreign: bool = False
    max_tokens: int | None = None  # None: the engine's own setting if given, else 8192
    runtime_dir: str | None = None
    port: int = 8000
    host: str = "127.0.0.1"  # 0.0.0.0 serves every interface (then give an API key)
    api_key: str | None = None  # passed in the engine's own variable, never on its command line
    exclude: list[str] | None = None  # None: the stored consistency check decides
    dry_run: bool = False
    native_when_faster: bool = True  # with use_tuned: leave_native() ops go to PyTorch too
    route_within: float = 1.0  # with use_tuned: a GEMM key's tuned kernel where <= this x cuBLAS's time


@dataclass
class Prepared:
    command: list[str]
    env: dict[str, str]  # only what tuner adds to the caller's environment
    runtime_dir: Path
    records: int
    exclude: list[str]
    left_native: list[str] = field(default_factory=list)  # excluded because native was faster
    engine: str = "vllm"
    routes: dict[str, int] = field(default_factory=dict)  # stored GEMM keys by where the router sends them


def routes_line(routes: dict[str, int], within: float) -> str:
    """What `tuner serve` says of the GEMM keys before the engine starts (the plugin says it again in
    the engine's log): the keys a tuned kernel serves and the keys left to cuBLAS."""
    import textwrap

    from tuner.inject.gemm_router import NATIVE, TARGETS, counts_text

    tuned = counts_text({t: n for t, n in routes.items() if t != NATIVE}, skip_zero=TARGETS)
    return textwrap.fill(f"GEMM keys to tuned kernels: {tuned or 'none'}; native {routes.get(NATIVE, 0)} "
                         f"(--route-within {within:g}; `tuner db show` lists each)", width=80, subsequent_indent="  ")


def _running_gpu() -> str | None:
    from tuner.inject.foreign import running_gpu_name

    return running_gpu_name()


def select_records(db_url: str | None, allow_foreign: bool) -> list[dict]:
    """Stored best configs measured on this GPU (every stored one with allow_foreign)."""
    from db import DatabaseUnusable
    from db.queries import stored_records

    try:
        recs = stored_records(db_url)
    except DatabaseUnusable as e:  # as tuner.store.open_db says it: one sentence, exit 2
        raise UserError(str(e)) from None
    gpu = _running_gpu()
    mine = [r for r in recs if r["environment"].get("gpu_name") == gpu and r["environment"]["device"] == "cuda"]
    if allow_foreign:
        return one_per_key(mine or [r for r in recs if r["environment"]["device"] == "cuda"])
    if not mine:
        raise UserError(f"no tuned results measured on this GPU ({gpu or 'none visible'}) in the database; "
                        "run `tuner tune` here first, or pass --allow-foreign")
    return one_per_key(mine)


def one_per_key(records: list[dict], running: dict | None = None) -> list[dict]:
    """One record per (op, key, dtype): the one measured with this machine's Triton and FlagGems if
    any, else the newest. Two environments on one GPU (a Triton upgrade, a second driver) each
    store a winner for the same key; handing both to the plugin failed ("two different mm
    winners")."""
    from tuner.inject.foreign import running_environment

    run = running if running is not None else running_environment(("triton", "flag_gems"))

    def rank(r: dict) -> tuple:
        env = r["environment"]
        same = sum(env.get(f) == v for f, v in run.items() if v is not None)
        return same, r.get("updated_at") or ""

    def ident(r: dict) -> tuple:
        return r["kernel"], tuple(sorted(r["key"].items())), r["dtype"]

    best: dict[tuple, dict] = {}
    for r in records:
        if ident(r) not in best or rank(r) > rank(best[ident(r)]):
            best[ident(r)] = r
    return [r for r in records if best[ident(r)] is r]


ROUTE_WITHIN = (0.5, 1.5)  # --route-within's range: beyond it a "tuned" route is no longer a fair name


def check_route_within(within: float, use_tuned: bool, fix: str = "add --use-tuned") -> None:
    lo, hi = ROUTE_WITHIN
    if not lo <= within <= hi:
        raise UserError(f"--route-within takes a factor from {lo} to {hi}: 1.0 runs a tuned GEMM kernel only "
                        "where it was timed faster than cuBLAS, 1.02 also where at most 2% slower (more "
                        "of the engine's time in Triton), 0.98 only where faster by 2%")
    if within != 1.0 and not use_tuned:
        raise UserError(f"--route-within applies to tuned routes: {fix}")


def leave_native(records: list[dict], within: float = 1.0) -> list[str]:
    """FlagGems ops whose every stored tuned key is still slower than native PyTorch (cuBLAS):
    serving them through FlagGems would only cost time. On the H100 FlagGems' addmm is 0.41-0.78x
    cuBLAS on all 17 MiniCPM-o keys even tuned (results/ops); leaving it native made the LLM's
    decode 0.93-0.96x native instead of 0.99-1.02x (results/e2e/run5_addmm_native). An op with no
    timed record, or with one key where the tuned kernel wins, stays with FlagGems. Only ops whose
    tuned kernel is one FlagGems op count (Coverage.flaggems_op: addmm, bmm; not mm, whose winners
    include the project's split-K GEMM). With `--route-within` a key counts as won where the router
    would route it (tuned under `within` x native), so the two never disagree."""
    from kernels import coverage

    by_op: dict[str, list[bool]] = {}
    for r in records:
        cov = coverage(r.get("kernel"))
        op = cov.flaggems_op if cov is not None else None
        if op is None:
            continue
        native, tuned = r.get("native_us"), r.get("time_us")
        by_op.setdefault(op, []).append(bool(native and tuned and tuned >= native * within)
                                        if within != 1.0 else bool(native and tuned and tuned > native))
    return sorted(op for op, slower in by_op.items() if all(slower))


def stored_exclude_list(db_url: str | None) -> list[str]:
    """The FlagGems ops the stored consistency check (`tuner check`) found failing on this GPU with
    this torch, Triton and FlagGems (what decides an op's behaviour; a driver or vLLM installed since
    does not void the verdicts); none without a tuner database or a check. Loads no torch."""
    from db import DatabaseUnusable, open_database
    from db import profile_queries as pq
    from tuner.fingerprint import installed_version
    from tuner.inject.foreign import running_environment

    try:
        db = open_database(db_url, create=False)
    except DatabaseUnusable:
        return []
    running = {"device": "cuda", "torch": installed_version("torch"),
               **running_environment(("gpu_name", "triton", "flag_gems"))}
    try:
        with db.session() as s:
            return pq.exclude_list_matching(s, running)
    finally:
        db.dispose()


# engines that compile the model (Inductor) and replay CUDA graphs: FlagGems sees only the GEMMs they
# call as extern kernels, all its other ops run on the eager path (vLLM 0.26: the sampler's argmax and
# gather every step), where each costs ~100-190 µs of Python launch (H100 e2e run 3) and compiles
# during serving (vLLM's JIT monitor, H200)
COMPILING_ENGINES = ("vllm", "flagscale")  # FlagScale runs `vllm serve`


def flaggems_ops(req: ServeRequest) -> str:
    """Which FlagGems ops serve: "routed" (only the GEMM keys the router sends to a tuned FlagGems
    kernel) when tuned configs go into a compiling engine, "all" (every op but the excluded ones)
    otherwise: untuned FlagGems as `tuner serve` always started it, and eager engines."""
    return "routed" if req.use_tuned and req.engine in COMPILING_ENGINES else "all"


def prepare(req: ServeRequest) -> Prepared:
    from tuner.inject.foreign import ForeignResultError
    from tuner.inject.plugin import runtime_env, write_runtime_dir

    if req.max_tokens is not None and req.max_tokens <= 0:
        raise UserError("--max-tokens must be a positive number")
    if Path(req.model).is_dir() and not (Path(req.model) / "config.json").is_file():
        # a name the engine resolves (a Hugging Face id) is not a folder here and passes
        raise UserError(f"{req.model} is a folder without config.json: not a model checkpoint "
                        "(write one with `tuner checkpoint`, or name a model the engine can fetch)")
    check_route_within(req.route_within, req.use_tuned)
    if req.exclude and (why := exclusion_error(req.exclude)):
        raise UserError(why)
    engine = engines.engine(req.engine)
    max_tokens, engine_args = engines.batch_tokens(engine, req.max_tokens, req.engine_args)
    key_env = getattr(engine, "API_KEY_ENV", None)
    if req.api_key and key_env is None:
        raise UserError(f"the {req.engine} engine takes no API key from tuner; use vllm, or its own settings")
    command = engine.command(req.model, req.port, engine_args, host=req.host)
    folder = Path(req.runtime_dir or DEFAULT_RUNTIME).expanduser()
    # engines started from a config file of their own (flagscale): checked now, written below
    config = (engine.config_writer(folder, req.model, req.port, engine_args, req.host)
              if hasattr(engine, "config_writer") else None)
    records = select_records(req.db_url, req.allow_foreign) if req.use_tuned else []
    exclude = req.exclude if req.exclude is not None else stored_exclude_list(req.db_url)
    left_native = ([op for op in leave_native(records, req.route_within) if op not in exclude]
                   if req.native_when_faster else [])
    exclude = [*exclude, *left_native]
    try:
        write_runtime_dir(folder, records, exclude, max_tokens=max_tokens, allow_foreign=req.allow_foreign,
                          route_within=req.route_within,
                          flaggems_ops=flaggems_ops(req))
    except ForeignResultError as e:
        raise UserError(str(e)) from None
    env = runtime_env(folder) | engine.env(folder) | ({key_env: req.api_key} if req.api_key else {})
    if config is not None:
        command = engine.write(config, env)
    from tuner.inject.gemm_router import route_counts

    routes = route_counts(records, req.route_within)
    return Prepared(command, env, folder, len(records), list(exclude), left_native, req.engine,
                    routes if sum(routes.values()) else {})


def launch(p: Prepared) -> int:
    """Run the engine in the foreground; SIGINT/SIGTERM go to it; its exit code is ours. An engine
    that starts its server in the background (flagscale) holds it with its own `launch`."""
    module = engines.engine(p.engine)
    if hasattr(module, "launch"):
        return module.launch(p.command, p.env)
    proc = subprocess.Popen(p.command, env={**os.environ, **p.env})

    def forward(signum, _frame):
        if proc.poll() is None:
            proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
