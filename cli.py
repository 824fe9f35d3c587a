"""The `tuner` command line: parse, call one function of tuner/, print. No logic here."""

from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path
from typing import List, Optional

import typer

from kernels import REGISTRY
from tuner.errors import UserError

app = typer.Typer(
    help="Profile MiniCPM-o 2.6 serving, autotune the Triton kernels behind its hot ops, store the "
    "winners in a SQL database, and serve with them injected into FlagGems / vLLM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Inspect the results database.", no_args_is_help=True)
app.add_typer(db_app, name="db")

DB_HELP = ("Database URL (any SQLAlchemy URL) or a SQLite file path. Default: $TUNER_DB_URL, else "
           "~/.tuner/tuner.db. Optuna's studies live in the same database: `optuna-dashboard <url>`.")


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", err=True, fg="red")
    raise typer.Exit(2)


# range checks as callbacks: typer's min/max print a type such as `<int range> [1<=x<=65535]` (25
# characters) in --help's type column, which took that width from every option's help text
def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise typer.BadParameter(f"Input should be {'greater' if value < 1 else 'less'} than or equal to "
                                 f"{1 if value < 1 else 65535}")
    return value


def _positive(value: Optional[int]) -> Optional[int]:
    if value is not None and value < 1:
        raise typer.BadParameter("Input should be greater than or equal to 1")
    return value


@app.command()
def tune(
    op: str = typer.Option(..., "--op", help=f"Op to tune: {', '.join(REGISTRY)} (`tuner ops` explains "
                           "each one's key fields)."),
    shape: List[str] = typer.Option([], "--shape", help="A key, e.g. M,N,K for mm (add ,kn for a K x N "
                                     "weight; default nk = nn.Linear layout). Repeatable."),
    shapes: Optional[str] = typer.Option(None, "--shapes", help="A preset list of keys, e.g. minicpmo-llm "
                                         "(the MiniCPM-o 2.6 LLM GEMMs x M in 1,16,64,256,2048,8192), or "
                                         "vllm-tp2 (one rank's GEMMs when vLLM serves the LLM with "
                                         "--tensor-parallel-size 2; mm: o, gate_up, down, lm_head; "
                                         "addmm: qkv). `tuner ops` lists each op's."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bf16 | fp16 | fp32 | fp8_w8a8, as the op takes "
                                        "them (`tuner ops` lists each op's: fp8_w8a8 for the MoE ops and "
                                        "scaled_mm). Default bf16 on a GPU (scaled_mm: fp8_w8a8), fp16 on CPU "
                                        "(the Triton interpreter rounds bf16 by truncation)."),
    trials: int = typer.Option(50, "--trials", help="Configs measured per key over its whole study "
                               "(failures count; duplicates and configs pruned before compiling do not): "
                               "a rerun measures what is left; raise it to search further."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds per key, at most."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Stop a key after this many measured "
                                           "trials without a 0.5% gain."),
    sampler: str = typer.Option("tpe", "--sampler", help="tpe (default) | gp | random | grid (every valid "
                                "config: the exhaustive reference)."),
    device: str = typer.Option("auto", "--device", help="cuda | cpu | auto. cpu runs the project's own "
                               "Triton kernels in the interpreter: timings are interpreter wall time."),
    compile_workers: Optional[int] = typer.Option(None, "--compile-workers", help="Processes compiling "
                                                  "upcoming candidates while one is timed (0 = off). "
                                                  "Default: up to 8 on a GPU."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampler seed, for reproducible searches."),
    workers: int = typer.Option(1, "--workers", help="Measurement processes (per GPU with --gpus) working "
                                "the same studies; configs are claimed in the database, so none is "
                                "measured twice. On CPU they share the machine's cores."),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="GPU indices to spread the workers over, e.g. "
                                       "0,1,2,3: --workers processes on each."),
    from_profile: Optional[str] = typer.Option(None, "--from-profile", help="Add the hot keys of a stored profile "
                                               "run (its id, or latest), hottest first: mm or addmm."),
    top: Optional[int] = typer.Option(None, "--top", callback=_positive,
                                      help="With --from-profile: at most this many keys."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Search Triton configs for an op's keys, measure each safely in a worker process, check it
    against the native result, and store the best per key. Running the same command again
    continues the same Optuna studies up to --trials in all.

    Example: tuner tune --op mm --shape 16,4608,3584 --shape 64,37888,3584 --trials 50

    Example (no GPU): tuner tune --op mm --shape 16,256,512 --trials 12 --device cpu

    Example (4 GPUs, 2 processes each): tuner tune --op mm --shapes minicpmo-llm --gpus 0,1,2,3 --workers 2"""
    from tuner.tuning import flow, parallel
    from tuner.report import tune_progress, tune_table

    if top is not None and from_profile is None:
        _fail(UserError("--top limits the keys of --from-profile: give --from-profile PROFILE_ID too"))
    if from_profile is not None:
        from tuner.profiling.hot_keys import keys_from_profile

        try:
            shape = list(shape) + keys_from_profile(db, from_profile, top, op)
        except UserError as e:
            _fail(e)
    req = flow.TuneRequest(op=op, shapes=shape, preset=shapes, dtype=dtype, trials=trials, timeout_s=timeout,
                           patience=patience, sampler=sampler, device=device, compile_workers=compile_workers,
                           seed=seed, db_url=db)
    try:
        failed = []
        if workers != 1 or gpus is not None:
            out = parallel.run_parallel(req, workers, gpus, on_child=_child_line(as_json),
                                        on_line=None if as_json else _progress_line)
            results, failed = out.results, out.failed
        else:
            with tune_progress(enabled=not as_json, total=trials) as (on_key, on_event):
                results = flow.tune(req, on_key=on_key, on_event=on_event)
    except UserError as e:
        _fail(e)
    except KeyboardInterrupt:
        typer.secho("interrupted: every config measured so far is kept in its study (configs in flight are "
                    "queued again); run the same command to continue", err=True, fg="yellow")
        raise typer.Exit(130)
    except Exception as e:
        from db import DatabaseUnusable, unusable_from

        if isinstance(e, DatabaseUnusable) or unusable_from(e):
            _fail(unusable_from(e) or e)
        raise
    if as_json:
        typer.echo(json.dumps([flow.result_as_dict(r) for r in results], indent=2))
    elif results:
        tune_table(results)
    if failed:
        raise typer.Exit(1)


def _progress_line(child, line: str) -> None:
    """--workers / --gpus: a key one measurement process finished (its share of the trials)."""
    typer.echo(f"{child.name} {line}")


def _child_line(as_json: bool):
    """--workers / --gpus: one line as each measurement process ends (a failure always, on stderr)."""

    def on_child(child) -> None:
        if child.code != 0:
            typer.secho(child.failure_line(), err=True, fg="red")
        elif not as_json:
            typer.echo(f"{child.name}: done, {sum(r.outcome.measured for r in child.results)} measured")

    return on_child


@db_app.command("show")
def db_show(
    op: Optional[str] = typer.Option(None, "--op", help="Only this op."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="Only results from this GPU name."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON records (what `tuner serve` exports)."),
    route_within: float = typer.Option(1.0, "--route-within", help="Show where `tuner serve --use-tuned "
                                       "--route-within` this factor sends each mm / addmm / bmm key."),
) -> None:
    """Best configs with their timings, the baselines timed beside them, and speedups; for the GEMMs,
    where serving sends each key: its tuned kernel in CUDA graphs (and eagerly where the GPU gain
    pays the launch's host time), or native.

    Example: tuner db show --op mm --gpu "NVIDIA H200" --route-within 1.02"""
    from tuner.report import best_records, best_table
    from tuner.serving.flow import check_route_within

    if op is not None and op not in REGISTRY:  # it printed "no stored results", as for a known op
        _fail(UserError(f"unknown op {op!r}; ops: {', '.join(REGISTRY)} (`tuner ops` explains each)"))
    try:
        check_route_within(route_within, use_tuned=True)
        recs = best_records(db, op, gpu)
    except UserError as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(recs, indent=2))
    else:
        best_table(recs, route_within)


@app.command()
def report(
    out: str = typer.Option("tuner-report", "--out", help="Folder for index.html and its PNG charts."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Write one self-contained HTML page with PNG charts from the database: per op, tuned vs
    FlagGems untuned vs native per key; each search's best so far against configs measured; the
    newest profiles' GPU time by op and kernel class with the Triton share; the newest serving bench.

    Example: tuner report --db ~/.tuner/tuner.db --out report && xdg-open report/index.html"""
    from tuner.reporting import collect, page

    try:
        data = collect.collect(db)
    except UserError as e:
        _fail(e)
    if data.empty:
        _fail(UserError("nothing stored yet: run `tuner tune`, `tuner profile` or `tuner bench` first"))
    try:
        path = page.write(data, Path(out))
    except OSError as e:  # --out names a file, or a folder that cannot be made
        _fail(UserError(f"cannot write the report into {out}: {e.strerror or e}"))
    typer.echo(f"report: {path} ({len(list(path.parent.glob('*.png')))} charts)")


@app.command()
def ops() -> None:
    """List the tunable ops, what each one is, and what each field of its key means.

    Example: tuner ops"""
    from kernels import REGISTRY, coverage, get_kernel

    for name in REGISTRY:
        k = get_kernel(name)
        typer.echo(textwrap.fill(f"{name}: {k.description}", width=80, subsequent_indent="  "))
        typer.echo(f"  dtypes {', '.join(k.dtypes)} (default {k.default_dtype('cuda')})")
        why = coverage(name).no_injector
        if why:
            typer.echo(textwrap.fill(f"  not served: {why}", width=80, subsequent_indent="    "))
        typer.echo(f"  key {','.join(k.key_names)}")
        for field in k.key_names:
            typer.echo(textwrap.fill(k.key_help.get(field, ""), width=78, initial_indent=f"    {field:8s} ",
                                     subsequent_indent=" " * 13))
        presets = k.presets()
        if presets:  # `tune --shapes NAME`
            names = ", ".join(f"{p} ({len(keys)} key{'s' * (len(keys) != 1)})" for p, keys in presets.items())
            typer.echo(textwrap.fill("  --shapes " + names, width=80, subsequent_indent="    ",
                                     break_on_hyphens=False))


WORKLOAD_HELP = "text | image | audio | speech | all. Repeatable."


def _stage_printer(as_json: bool):
    """Progress lines for a long command (none with --json: stdout is the JSON)."""
    if as_json:
        return None
    from tuner.report import console

    return lambda msg: console.print(f"[dim]{msg}...[/dim]")


def _show(result, as_json: bool, table) -> None:
    """A command's result as indented JSON, or through its table printer."""
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        table(result)


def _int_list(text: Optional[str], name: str) -> Optional[List[int]]:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(UserError(f"{name} must be comma-separated integers, e.g. 1,8,32; got {text!r}"))


@app.command()
def profile(
    workload: List[str] = typer.Option(["all"], "--workload", help=WORKLOAD_HELP),
    scale: float = typer.Option(1.0, "--scale", help="Shrink the model (0 < F <= 1); anything but 1 is "
                                "labelled: its shapes are not the real model's."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Folder of MiniCPM-o 2.6 *.safetensors "
                                          "(default: random weights)."),
    device: str = typer.Option("auto", "--device", help="auto | cuda | cpu. On CPU the time is op self time."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bf16 | fp16 | fp32. Default bf16 on a GPU, fp32 on CPU."),
    prompt_tokens: Optional[int] = typer.Option(None, "--prompt-tokens", help="Text prefill length S (default 512)."),
    decode_batches: Optional[str] = typer.Option(None, "--decode-batches", help="Decode batch sizes, e.g. 1,8,32."),
    decode_steps: Optional[int] = typer.Option(None, "--decode-steps", help="Decode steps per batch (default 16)."),
    top: int = typer.Option(15, "--top", callback=_positive, help="Rows to print per table."),
    trace: Optional[str] = typer.Option(None, "--trace", help="Chrome/Perfetto trace path (.json or .json.gz; "
                                        "default ./tuner-trace.json, replaced each run); the FlagGems run "
                                        "writes <name>.flaggems.json beside it."),
    no_check: bool = typer.Option(False, "--no-check", help="Skip the consistency check."),
    no_flaggems: bool = typer.Option(False, "--no-flaggems", help="Profile natively only."),
    overhead: bool = typer.Option(False, "--overhead", help="Also measure the profiler's own overhead."),
    e2e_steps: int = typer.Option(8, "--e2e-steps", help="Decode steps of the end-to-end logits comparison (0 = off)."),
    check_timeout: float = typer.Option(300.0, "--check-timeout", help="Seconds the check waits for one op's answer."),
    candidate: Optional[str] = typer.Option(None, "--candidate", help="module:function checked instead of FlagGems "
                                            "(for testing the check harness)."),
    engine: str = typer.Option("transformers", "--engine", help="transformers: the MiniCPM-o workload "
                               "modules, eagerly (the options above); vllm: inside vLLM's worker, one "
                               "request per mode (--model, --modes)."),
    model: Optional[str] = typer.Option(None, "--model", help="With --engine vllm: the checkpoint folder "
                                        "(e.g. written by `tuner checkpoint`)."),
    modes: str = typer.Option("native,tuned", "--modes", help="With --engine vllm: native, untuned, tuned."),
    concurrency: int = typer.Option(1, "--concurrency", help="With --engine vllm: requests in the profiled "
                                    "batch (decode GEMMs run at M = this, padded to a CUDA-graph size)."),
    out_dir: str = typer.Option("engine_profile", "--out-dir", help="With --engine vllm: each mode's log "
                                "and trace, profiles.json."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Profile MiniCPM-o 2.6 serving requests natively and with FlagGems (minus the ops the consistency
    check rejects), rank (op, shapes, dtype, kernel) by time, store the runs, write the trace.

    Example: tuner profile --engine vllm --model /tmp/ck --modes native,untuned,tuned"""
    if engine != "transformers":
        _profile_engine(engine, model, modes, out_dir, top, db, as_json, concurrency)
        return
    from tuner.profiling import flow
    from tuner.report import profile_tables

    req = flow.ProfileRequest(workloads=workload, scale=scale, weights=weights, device=device, dtype=dtype,
                              prompt_tokens=prompt_tokens, decode_batches=_int_list(decode_batches, "--decode-batches"),
                              decode_steps=decode_steps, top=top, trace=trace, check=not no_check,
                              flaggems=not no_flaggems, overhead=overhead, e2e_steps=e2e_steps,
                              check_timeout_s=check_timeout, candidate=candidate, db_url=db)
    try:
        outcome = flow.profile(req, on_stage=_stage_printer(as_json))
    except UserError as e:
        _fail(e)
    _show(outcome.to_dict(), as_json, profile_tables)


def _profile_engine(engine: str, model: Optional[str], modes: str, out_dir: str, top: int,
                    db: Optional[str], as_json: bool, concurrency: int = 1) -> None:
    from tuner.profiling import engine_flow
    from tuner.report import engine_profile_tables

    if engine != "vllm":
        _fail(UserError(f"unknown engine {engine!r}; use transformers or vllm"))
    if not model:
        _fail(UserError("--engine vllm needs --model, the checkpoint folder to serve"))
    req = engine_flow.EngineProfileRequest(model=model, modes=tuple(m for m in modes.split(",") if m),
                                           out_dir=out_dir, db_url=db, top=top, concurrency=concurrency)
    try:
        out = engine_flow.profile_engine(req, on_mode=_stage_printer(as_json))
    except UserError as e:
        _fail(e)
    _show(out, as_json, engine_profile_tables)
    if any("error" in p for p in out.values()):
        raise typer.Exit(1)


@app.command()
def check(
    workload: List[str] = typer.Option(["all"], "--workload", help=WORKLOAD_HELP),
    scale: float = typer.Option(1.0, "--scale", help="Shrink the model (0 < F <= 1), labelled in the output."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Folder of MiniCPM-o 2.6 *.safetensors."),
    device: str = typer.Option("auto", "--device", help="auto | cuda | cpu (cpu only with --candidate)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bf16 | fp16 | fp32. Default bf16 on a GPU, fp32 on CPU."),
    prompt_tokens: Optional[int] = typer.Option(None, "--prompt-tokens", help="Text prefill length S (default 512)."),
    decode_batches: Optional[str] = typer.Option(None, "--decode-batches", help="Decode batch sizes, e.g. 1,8."),
    decode_steps: Optional[int] = typer.Option(None, "--decode-steps", help="Decode steps per batch (default 16)."),
    e2e_steps: int = typer.Option(8, "--e2e-steps", help="Decode steps of the end-to-end logits comparison (0 = off)."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for one op's answer before calling it a crash."),
    jobs: Optional[int] = typer.Option(None, "--jobs", callback=_positive,
                                       help="Op subprocesses at a time (default 4 on a GPU)."),
    candidate: Optional[str] = typer.Option(None, "--candidate", help="module:function checked instead of FlagGems "
                                            "(for testing the harness)."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Consistency check: every FlagGems op the workload uses, on inputs recorded from it, against the
    native op, each in its own subprocess; stores the results (the exclude list `tuner serve` uses)
    and compares end-to-end logits.

    Example: tuner check --workload text --device cuda"""
    from tuner.profiling import flow
    from tuner.report import check_table

    req = flow.CheckRequest(workloads=workload, scale=scale, weights=weights, device=device, dtype=dtype,
                            prompt_tokens=prompt_tokens, decode_batches=_int_list(decode_batches, "--decode-batches"),
                            decode_steps=decode_steps, e2e_steps=e2e_steps, timeout_s=timeout, jobs=jobs,
                            candidate=candidate, db_url=db)
    try:
        rep = flow.check(req, on_stage=_stage_printer(as_json))
    except UserError as e:
        _fail(e)
    _show(rep, as_json, check_table)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="Model to serve: a checkpoint folder (e.g. one written by "
                                "`tuner checkpoint`, or a real MiniCPM-o 2.6 / Qwen2 checkpoint) or a name "
                                "the engine resolves. Arguments after `--` go to the engine."),
    use_tuned: bool = typer.Option(False, "--use-tuned", help="Inject the stored best configs measured on this "
                                   "GPU (FlagGems LibTuner cache rows, split-K mm overrides, vLLM fused-MoE "
                                   "files). Without it: FlagGems untuned, for comparison."),
    engine: str = typer.Option("vllm", "--engine", help="vllm | flagscale | transformers (transformers' own "
                               "OpenAI-compatible server). flagscale writes a FlagScale serve config and runs "
                               "vLLM through `flagscale serve`."),
    port: int = typer.Option(8000, "--port", callback=_port, help="Port the engine listens on (1-65535)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address the engine listens on: this machine only "
                             "by default; 0.0.0.0 serves the network (give --api-key then)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="TUNER_API_KEY", help="Key clients must "
                                          "send (Authorization: Bearer KEY); passed to vLLM in VLLM_API_KEY, "
                                          "not on its command line. Default: $TUNER_API_KEY."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Largest M (batched tokens) the "
                                             "engine meets: every M from 1 to this gets a seeded config. The "
                                             "same setting as vLLM's --max-num-batched-tokens, which tuner "
                                             "passes (default 8192, or the value given after `--`)."),
    exclude: Optional[str] = typer.Option(None, "--exclude", help="FlagGems ops to leave to PyTorch, comma "
                                          "separated (checked against the FlagGems installed here). Default: "
                                          "the ops the stored consistency check failed."),
    allow_foreign: bool = typer.Option(False, "--allow-foreign", help="Use results measured on another GPU or "
                                       "software stack (loudly warned)."),
    runtime_dir: Optional[str] = typer.Option(None, "--runtime-dir", help="Folder for the exported state "
                                              "(default ~/.tuner/runtime)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Prepare the runtime folder, print the command and "
                                 "environment, do not launch."),
    # one flag, not a --x/--no-x pair: the pair's 40 characters widened the options column of
    # `serve --help` until the help text had 18 of 80 columns
    flaggems_always: bool = typer.Option(False, "--flaggems-always",
                                         help="With --use-tuned: keep on FlagGems the ops (addmm, bmm) whose "
                                         "tuned kernel is slower than native on every stored key (by "
                                         "default they are left to PyTorch)."),
    route_within: float = typer.Option(1.0, "--route-within", help="With --use-tuned: run a GEMM key's "
                                       "tuned Triton kernel where it was timed at most this factor of "
                                       "cuBLAS's time (1.0: only where faster; 1.02 keeps near-ties in "
                                       "Triton, for the engine's Triton share, at up to 2% a key)."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Launch an engine with FlagGems enabled (minus the ops the consistency check rejected) and,
    with --use-tuned, every tuned config active so nothing autotunes at serve time.

    Example: tuner serve /tmp/ck --engine vllm --use-tuned --port 8000 -- --max-model-len 4096

    Example (to the network): TUNER_API_KEY=... tuner serve /tmp/ck --use-tuned --host 0.0.0.0

    Example (FlagScale's launcher): tuner serve /tmp/ck --engine flagscale --use-tuned -- --trust-remote-code"""
    from tuner.serving import flow

    req = flow.ServeRequest(model=model, engine=engine, use_tuned=use_tuned, engine_args=list(ctx.args),
                            db_url=db, allow_foreign=allow_foreign, max_tokens=max_tokens,
                            runtime_dir=runtime_dir, port=port, host=host, api_key=api_key, dry_run=dry_run,
                            native_when_faster=not flaggems_always, route_within=route_within,
                            exclude=[o for o in exclude.split(",") if o] if exclude is not None else None)
    try:
        prepared = flow.prepare(req)
    except UserError as e:
        _fail(e)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        typer.secho(f"warning: the engine listens on {host} without an API key: anyone who reaches this "
                    "machine can use it (give --api-key or $TUNER_API_KEY)", err=True, fg="yellow")
    typer.echo(f"runtime folder {prepared.runtime_dir}: {prepared.records} tuned configs, "
               f"FlagGems excluded ops: {', '.join(prepared.exclude) or 'none'}"
               + (f" ({', '.join(prepared.left_native)}: tuned still slower than native)" if prepared.left_native
                  else ""), err=True)
    if prepared.routes:
        typer.echo(flow.routes_line(prepared.routes, route_within), err=True)
    if dry_run:
        shown = {k: ("***" if "API_KEY" in k else v) for k, v in prepared.env.items()}
        typer.echo(json.dumps({"command": prepared.command, "env": shown}, indent=2))
        return
    raise typer.Exit(flow.launch(prepared))


@app.command()
def bench(
    model: str = typer.Argument(..., help="Checkpoint folder to serve (e.g. one written by `tuner checkpoint`)."),
    engine: str = typer.Option("vllm", "--engine", help="Engine to benchmark: vllm (in-process), flagscale "
                               "(served through FlagScale), or vllm,flagscale: every mode in both, both "
                               "served, the same requests; ratios to the first."),
    modes: str = typer.Option("native,untuned,tuned", "--modes", help="Comma-separated: native (the engine "
                              "as it is), untuned (what `tuner serve` starts), tuned (`tuner serve --use-tuned`)."),
    concurrency: str = typer.Option("1,64", "--concurrency", help="Concurrent requests per batch, e.g. 1,64."),
    prompt_tokens: int = typer.Option(512, "--prompt-tokens", help="Prompt length of every request."),
    output_tokens: int = typer.Option(128, "--output-tokens", help="Generated tokens per request (EOS ignored)."),
    warm_repeats: int = typer.Option(2, "--warm-repeats", help="Warm batches per concurrency after the cold one."),
    max_tokens: int = typer.Option(4096, "--max-tokens", help="The engine's max_num_batched_tokens, which is "
                                   "also the largest M tuned configs are seeded for."),
    profile: bool = typer.Option(False, "--profile", help="Also write a torch.profiler trace of one batch "
                                 "per mode (vLLM's profiler, inside the engine's worker)."),
    profile_concurrency: int = typer.Option(1, "--profile-concurrency", help="With --profile: requests in the "
                                            "profiled batch (512 + 64 tokens each); 64 puts decode GEMMs at "
                                            "M = 64."),
    out_dir: str = typer.Option("bench", "--out-dir", help="Folder for each mode's log, result and trace, "
                                "bench.json and bench.png."),
    exclude: Optional[str] = typer.Option(None, "--exclude", help="As `tuner serve --exclude` (default: the "
                                          "stored consistency check's failures)."),
    allow_foreign: bool = typer.Option(False, "--allow-foreign", help="As `tuner serve --allow-foreign`."),
    timeout: float = typer.Option(900.0, "--timeout", help="Seconds one mode may take, engine start included "
                                  "(served engines: seconds until the server answers, and per request)."),
    served: bool = typer.Option(False, "--served", help="Serve vLLM as `tuner serve` does and send the "
                                "requests over its OpenAI API (as flagscale always is)."),
    port: int = typer.Option(8000, "--port", callback=_port,
                             help="Port of served engines on 127.0.0.1 (one at a time; 1-65535)."),
    route_within: float = typer.Option(1.0, "--route-within", help="The tuned mode's `tuner serve "
                                       "--route-within` (1.0: tuned GEMM kernels only where faster than cuBLAS)."),
    rounds: int = typer.Option(1, "--rounds", help="Run every mode this many times, each a fresh engine, the "
                               "order reversed every other round; the table shows medians, a line per "
                               "mode each round's ratio to native (one engine pair's ratio carries the "
                               "spread between engine starts, ~2% on the H200)."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Benchmark one model in the engine: native vs FlagGems untuned vs tuned.

    The same requests in each mode, one engine process per mode: engine
    start, output tokens/s at each concurrency (cold and warm), TTFT/TPOT
    percentiles, autotunes and Triton JIT compilations seen in the engine
    log, teacher-forced prompt-logprob agreement with native. Stored in the
    database; a table, a PNG chart in --out-dir, or --json.

    Example: tuner bench /tmp/ck --modes native,tuned --out-dir /tmp/bench

    Example (FlagScale vs vLLM, both served):
    tuner bench /tmp/ck --engine vllm,flagscale --modes tuned"""
    from tuner.serving import bench as flow
    from tuner.serving.bench_report import bench_chart

    req = flow.BenchRequest(model=model, engine=engine, modes=tuple(m for m in modes.split(",") if m),
                            concurrency=tuple(_int_list(concurrency, "--concurrency") or ()),
                            prompt_tokens=prompt_tokens, output_tokens=output_tokens, warm_repeats=warm_repeats,
                            max_tokens=max_tokens, profile=profile, profile_concurrency=profile_concurrency,
                            out_dir=out_dir, db_url=db,
                            exclude=[o for o in exclude.split(",") if o] if exclude is not None else None,
                            allow_foreign=allow_foreign, timeout_s=timeout, served=served, port=port,
                            route_within=route_within, rounds=rounds)
    try:
        report = flow.bench(req, on_mode=lambda m: typer.echo(f"bench: {m} ...", err=True))
    except UserError as e:
        _fail(e)
    chart = bench_chart(report, Path(out_dir) / "bench.png") if report["runs"] else None
    _print_bench(report, as_json, chart)


@app.command("bench-report")
def bench_report(
    out_dir: str = typer.Argument(..., help="The --out-dir of a `tuner bench` run."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Report a bench again from its folder: the engines that finished.

    `tuner bench` keeps every finished engine on disk (modes.json, each
    mode's result.json) and reports at the end; a bench killed before that
    (a time limit, a lost terminal) leaves engines and no report. This
    prints the table and lines the bench would have, from the engines that
    finished: medians over the rounds that ran, an engine that started but
    never finished named as FAILED (exit 1 then, as bench). Nothing is
    stored in a database.

    Example: tuner bench-report /tmp/bench"""
    from tuner.serving.bench_recover import recover

    try:
        report = recover(out_dir)
    except UserError as e:
        _fail(e)
    _print_bench(report, as_json)


def _print_bench(report: dict, as_json: bool, chart: Optional[Path] = None) -> None:
    """A bench report as JSON or as the table and its lines; exit 1 when an engine failed or never
    finished (bench and bench-report alike)."""
    if as_json:
        typer.echo(json.dumps(report, indent=1, default=str))
    else:
        from tuner.report import console
        from tuner.serving.bench_report import agreement_lines, bench_table

        console.print(bench_table(report))
        for line in agreement_lines(report):
            console.print(line)
        if chart:
            console.print(f"chart: {chart}")
    if report["errors"]:
        raise typer.Exit(1)


@app.command()
def checkpoint(
    folder: str = typer.Argument(..., help="New folder to write (must not exist or be empty)."),
    model: str = typer.Option("minicpmo-llm", "--model", help="minicpmo-llm: the MiniCPM-o 2.6 LLM (Qwen2, "
                              "28 layers, hidden 3584). qwen3-moe: a Qwen3-MoE with Qwen3-30B-A3B's "
                              "dimensions (128 experts, top-8, hidden 2048, expert intermediate 768, "
                              "vocab 151936), the layers --layers says."),
    layers: Optional[int] = typer.Option(None, "--layers", help="qwen3-moe's decoder layers, 1-48 "
                                         "(default 8). Each is 1.25 GB in bf16 (the experts 1.21 GB), "
                                         "embeddings + lm_head 1.25 GB: 8 layers = 11.2 GB, written and "
                                         "loaded in seconds on one H200 with ~100 GB left for the KV "
                                         "cache; all 48 = 61 GB, nearly the whole 64 GiB disk of a "
                                         "1-GPU host. Every layer has the real shapes, so fewer layers "
                                         "change no fused-MoE key."),
    scale: float = typer.Option(1.0, "--scale", help="Shrink minicpmo-llm (CPU tests); 1.0 = MiniCPM-o 2.6's LLM."),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16 | fp16 | fp32."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
    tiny: bool = typer.Option(False, "--tiny", hidden=True, help="qwen3-moe with tiny dimensions (CPU tests)."),
) -> None:
    """Write a servable checkpoint with random weights and a tokenizer trained locally (nothing is
    downloaded): the MiniCPM-o 2.6 LLM, or with --model qwen3-moe a Qwen3-MoE whose fused-MoE
    layers meet the keys of `tuner tune --op vllm_fused_moe --shapes qwen3-30b-a3b-serve`. vLLM
    serves either without remote code. To serve a real checkpoint, pass its folder to `tuner serve`
    instead.

    Example: tuner checkpoint /tmp/ck && tuner serve /tmp/ck --use-tuned

    Example (MoE): tuner checkpoint /tmp/moe --model qwen3-moe --layers 8 && tuner bench /tmp/moe --modes native,tuned"""
    from tuner.serving.checkpoint import write_checkpoint

    try:
        path = write_checkpoint(folder, model=model, scale=scale, layers=layers, dtype=dtype, seed=seed, tiny=tiny)
    except UserError as e:
        _fail(e)
    typer.echo(str(path))


def _one_line_summaries(*apps: typer.Typer) -> None:
    """A command list shows each command's first docstring paragraph, and in Typer's Rich markup
    mode with the docstring's line breaks, which cut the 80-column list mid-sentence: join them."""
    for group in apps:
        for command in group.registered_commands:
            if command.short_help is None and command.callback is not None and command.callback.__doc__:
                first = inspect.cleandoc(command.callback.__doc__).split("\n\n")[0]
                command.short_help = " ".join(first.split())


_one_line_summaries(app, db_app)

if __name__ == "__main__":
    app()
