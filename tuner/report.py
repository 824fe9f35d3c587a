"""Tables and progress display for the CLI (rich)."""

from __future__ import annotations

import contextlib
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tuner.errors import UserError

console = Console(width=None if Console().is_terminal else 160)


@contextlib.contextmanager
def tune_progress(enabled: bool = True) -> Iterator[tuple]:
    """Callbacks (on_key, on_event) driving one bar per key."""
    if not enabled:
        yield None, None
        return
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("best {task.fields[best]}"), TimeElapsedColumn(), console=console)
    state: dict = {"task": None}

    def on_key(key, i, n):
        state["task"] = progress.add_task(f"[{i + 1}/{n}] {','.join(map(str, key))}", total=None, best="-")

    def on_event(ev):
        if state["task"] is None:
            return
        best = f"{ev.best_us:.2f} µs" if ev.best_us else "-"
        progress.update(state["task"], completed=ev.measured, best=best)

    with progress:
        yield on_key, on_event


def short_config(cfg: dict | None) -> str:
    """'splitk 16x64x128 g1 sk4 w4 s3' for an mm config; key=value pairs otherwise."""
    if cfg is None:
        return "-"
    if {"BLOCK_M", "BLOCK_N", "BLOCK_K"} <= set(cfg):
        return (f"{cfg.get('variant', '')} {cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']} "
                f"g{cfg.get('GROUP_M', '-')} sk{cfg.get('SPLIT_K', 1)} w{cfg.get('num_warps')} s{cfg.get('num_stages')}")
    return " ".join(f"{k}={v}" for k, v in cfg.items())


def _fmt(v, spec=".2f", suffix=""):
    return "-" if v is None else f"{v:{spec}}{suffix}"


def tune_table(results) -> None:
    t = Table(title="tuning results (µs; speedup = baseline / tuned)")
    for col in ("key", "best config", "tuned", "untuned", "native", "vs untuned", "vs native",
                "trials", "stop", "timing"):
        t.add_column(col)
    for r in results:
        o = r.outcome
        b = o.setup.baselines_us
        cfg = short_config(o.best_config)
        un, na = b.get("untuned"), b.get("native")
        t.add_row(",".join(map(str, r.key)), cfg, _fmt(o.best_us), _fmt(un), _fmt(na),
                  _fmt(un / o.best_us if un and o.best_us else None, ".2f", "x"),
                  _fmt(na / o.best_us if na and o.best_us else None, ".2f", "x"),
                  f"{o.measured} ({o.counts.get('failed', 0)} failed, {o.counts.get('invalid', 0)} pruned, "
                  f"{o.counts.get('duplicate', 0)} dup)", o.stop_reason, o.timing)
    console.print(t)
    for r in results:
        for name, err in r.outcome.setup.baseline_errors.items():
            console.print(f"[yellow]baseline {name} for {r.key}: {err}[/yellow]")


def best_records(db_url, op, gpu) -> list[dict]:
    from db import DatabaseUnusable, open_database, queries

    try:
        db = open_database(db_url, create=False)
    except DatabaseUnusable as e:
        raise UserError(str(e)) from None
    try:
        with db.session() as s:
            return queries.records(queries.best_configs(s, kernel=op, gpu_name=gpu))
    finally:
        db.dispose()


def best_table(recs: list[dict]) -> None:
    if not recs:
        console.print("no stored results")
        return
    t = Table(title="best configs (µs; speedup = baseline / tuned)")
    for col in ("op", "key", "dtype", "config", "tuned", "untuned", "native", "vs untuned", "vs native",
                "rel err", "trials", "device", "timing"):
        t.add_column(col)
    for r in recs:
        env = r["environment"]
        cfg = short_config(r["config"])
        t.add_row(r["kernel"], ",".join(f"{k}={v}" for k, v in r["key"].items()), r["dtype"], cfg,
                  _fmt(r["time_us"]), _fmt(r["untuned_us"]), _fmt(r["native_us"]),
                  _fmt(r["speedup_vs_untuned"], ".2f", "x"), _fmt(r["speedup_vs_native"], ".2f", "x"),
                  _fmt(r["rel_error"], ".1e"), str(r["trials_used"]), env.get("gpu_name") or env["device"],
                  r["timing"])
    console.print(t)
