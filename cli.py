"""The `tuner` command line: parse, call one function of tuner/, print. No logic here."""

from __future__ import annotations

import json
from typing import List, Optional

import typer

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


@app.command()
def tune(
    op: str = typer.Option(..., "--op", help="Op to tune: mm (see `tuner ops`)."),
    shape: List[str] = typer.Option([], "--shape", help="A key, e.g. M,N,K for mm (add ,kn for a K x N "
                                     "weight; default nk = nn.Linear layout). Repeatable."),
    shapes: Optional[str] = typer.Option(None, "--shapes", help="A preset list of keys, e.g. minicpmo-llm "
                                         "(the MiniCPM-o 2.6 LLM GEMMs x M in 1,16,64,256,2048,8192)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bf16 | fp16 | fp32. Default bf16 on a GPU, "
                                        "fp16 on CPU (the Triton interpreter computes bf16 wrongly)."),
    trials: int = typer.Option(50, "--trials", help="Configs to measure per key (failures count; "
                               "duplicates and configs pruned before compiling do not)."),
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
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Search Triton configs for an op's keys, measure each safely in a worker process, check it
    against the native result, and store the best per key. Running the same command again
    continues the same Optuna studies."""
    from tuner import tune as flow
    from tuner.report import tune_progress, tune_table

    req = flow.TuneRequest(op=op, shapes=shape, preset=shapes, dtype=dtype, trials=trials, timeout_s=timeout,
                           patience=patience, sampler=sampler, device=device, compile_workers=compile_workers,
                           seed=seed, db_url=db)
    try:
        with tune_progress(enabled=not as_json) as (on_key, on_event):
            results = flow.tune(req, on_key=on_key, on_event=on_event)
    except UserError as e:
        _fail(e)
    except Exception as e:
        from db import DatabaseUnusable

        if isinstance(e, DatabaseUnusable):
            _fail(e)
        raise
    if as_json:
        typer.echo(json.dumps([r_as_dict(r) for r in results], indent=2))
    else:
        tune_table(results)


def r_as_dict(r) -> dict:
    o = r.outcome
    return {"key": list(r.key), "best_config": o.best_config, "best_us": o.best_us, "stored": r.stored,
            "baselines_us": o.setup.baselines_us, "baseline_errors": o.setup.baseline_errors,
            "first_call_s": o.setup.first_call_s, "measured": o.measured, "trials_total": o.trials_total,
            "counts": o.counts, "stop_reason": o.stop_reason, "timing": o.timing, "wall_s": o.wall_s, "setup_s": o.setup_s,
            "study": o.study_name}


@db_app.command("show")
def db_show(
    op: Optional[str] = typer.Option(None, "--op", help="Only this op."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="Only results from this GPU name."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON records (what `tuner serve` exports)."),
) -> None:
    """Best configs with their timings, the baselines timed beside them, and speedups."""
    from tuner.report import best_records, best_table

    try:
        recs = best_records(db, op, gpu)
    except UserError as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(recs, indent=2))
    else:
        best_table(recs)


@app.command()
def ops() -> None:
    """List the tunable ops and their key fields."""
    from kernels import REGISTRY, get_kernel

    for name in sorted(REGISTRY):
        k = get_kernel(name)
        typer.echo(f"{name:12s} key {','.join(k.key_names):14s} {k.description}")


if __name__ == "__main__":
    app()
