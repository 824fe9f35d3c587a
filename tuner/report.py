"""Tables and progress display for the CLI (rich)."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


# the terminal's width; piped, $COLUMNS or 80 (rich's default): tables are laid out for 80
console = Console()


@contextlib.contextmanager
def tune_progress(enabled: bool = True, total: int | None = None, share: bool = False) -> Iterator[tuple]:
    """Callbacks (on_key, on_event) driving one bar per key: measured trials of `total` (--trials;
    a key can stop early: patience, timeout, an exhausted space) and the search's best so far, one
    timing each, which the results table's "tuned" re-measures beside the baselines. share: a
    worker's lines count what this process measured (its share of the study), not the study's
    total: another worker's configs measured before this one opened the study are not its own."""
    if not enabled:
        yield None, None
        return
    if not console.is_terminal:
        yield from _key_lines(total, share)
        return
    progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                        TextColumn("search best {task.fields[best]}"), TimeElapsedColumn(), console=console)
    state: dict = {"task": None}

    def on_key(key, i, n):
        state["task"] = progress.add_task(f"[{i + 1}/{n}] {','.join(map(str, key))}", total=total, best="-")

    def on_event(ev):
        if state["task"] is None:
            return
        best = f"{ev.best_us:.2f} µs" if ev.best_us else "-"
        progress.update(state["task"], completed=ev.own if share else ev.measured, best=best)

    with progress:
        yield on_key, on_event


def _key_lines(total: int | None, share: bool = False) -> Iterator[tuple]:
    """Piped or logged output: rich draws its bars only when the run ends (never, if it is killed),
    so one line per key as the key ends, flushed at once."""
    state: dict = {"line": None}

    def flush():
        if state["line"] is not None:
            console.print(f"{state['line']}: {state['measured']}/{total or '-'} measured, search best "
                          f"{state['best']}, {time.monotonic() - state['t0']:.0f} s", soft_wrap=True)
            console.file.flush()
            state["line"] = None

    def on_key(key, i, n):
        flush()
        state.update(line=f"[{i + 1}/{n}] {','.join(map(str, key))}", t0=time.monotonic(), measured=0, best="-")

    def on_event(ev):
        if state["line"] is not None:
            state.update(measured=ev.own if share else ev.measured, best=f"{ev.best_us:.2f} µs" if ev.best_us else "-")

    try:
        yield on_key, on_event
    finally:
        flush()


# the own kernels' knobs, shown when on: OCCUPANCY as o2, the flags by their initials
KNOB_MARKS = (("OCCUPANCY", "o"), ("WARP_SPECIALIZE", "ws"), ("FLATTEN", "fl"), ("EPILOGUE_SUBTILE", "es"),
              ("FUSED_REDUCE", "fr"), ("HOST_DESC", "hd"), ("SK_TAIL_ONLY", "tail"), ("SK_SPLIT", "cut"))
VALUED_KNOBS = ("OCCUPANCY", "SK_SPLIT")  # marked with their value ('o2', 'cut4'); OCCUPANCY only above 1


def short_config(cfg: dict | None) -> str:
    """'splitk 16x64x128 g1 sk4 w4 s3' for an mm config (SPLIT_K where the op has it, the
    own kernels' knobs that are on: 'persistent 128x128x64 g8 w4 s4 ws', 'splitk ... sk4 w4 s3 fr');
    key=value pairs otherwise."""
    if cfg is None:
        return "-"
    # addmm's and bmm's spaces name their tiles after FlagGems' kernels (BLOCK_SIZE_M..., TILE_M...)
    cfg = {**cfg, **{f"BLOCK_{d}": cfg[f"{p}_{d}"] for p in ("BLOCK_SIZE", "TILE") for d in "MNK" if f"{p}_{d}" in cfg}}
    if {"BLOCK_M", "BLOCK_N", "BLOCK_K"} <= set(cfg):
        split = f" sk{cfg['SPLIT_K']}" if "SPLIT_K" in cfg else ""
        knobs = "".join(f" {mark}{cfg[k] if k in VALUED_KNOBS else ''}" for k, mark in KNOB_MARKS
                        if cfg.get(k) and (k != "OCCUPANCY" or cfg[k] > 1))
        return (f"{cfg.get('variant', '')} {cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']} "
                f"g{cfg.get('GROUP_M', '-')}{split} w{cfg.get('num_warps')} s{cfg.get('num_stages')}{knobs}")
    return " ".join(f"{k}={v}" for k, v in cfg.items())


def _narrow_columns(t: Table, columns: list[tuple[str, str]]) -> None:
    """(name, justify) columns that never wrap (keys, numbers, a status)."""
    for col, just in columns:
        t.add_column(col, justify=just, no_wrap=True)


def compact_table(title: str, columns: list[tuple[str, str]], show_edge: bool = True) -> Table:
    """The 80-column layout of tuner's tables: title on the left, a rule under the header, one space
    between columns; the given (name, justify) columns never wrap."""
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=show_edge, pad_edge=False,
              padding=(0, 1), collapse_padding=True)
    _narrow_columns(t, columns)
    return t


def fmt(v, spec=".2f", suffix=""):
    """A number for a table cell, "-" when there is none."""
    return "-" if v is None else f"{v:{spec}}{suffix}"


def tune_table(results) -> None:
    """80 columns: the timings per key (tuned = the winner re-measured beside the baselines, so it
    can differ from the progress bar's search best), then one line per key on how its search went."""
    t = compact_table("tuning results: µs, x = baseline / tuned",
                      [("key", "left"), ("tuned", "right"), ("untuned", "right"), ("native", "right"),
                       ("x untun", "right"), ("x nat", "right")])
    t.add_column("config", overflow="fold", min_width=12)
    for r in results:
        o = r.outcome
        b = o.setup.baselines_us
        un, na = b.get("untuned"), b.get("native")
        t.add_row(",".join(map(str, r.key)), fmt(o.best_us, ".1f"), fmt(un, ".1f"), fmt(na, ".1f"),
                  fmt(un / o.best_us if un and o.best_us else None, ".2f", "x"),
                  fmt(na / o.best_us if na and o.best_us else None, ".2f", "x"), short_config(o.best_config))
    console.print(t)
    for r in results:
        o = r.outcome
        console.print(f"{','.join(map(str, r.key))}: {o.measured} measured ({o.counts.get('failed', 0)} failed, "
                      f"{o.counts.get('invalid', 0)} pruned, {o.counts.get('duplicate', 0)} duplicates), "
                      f"stopped: {o.stop_reason}, timing: {o.timing}")
        if o.best_config is not None and not r.stored:  # the row above is this run's, not the database's
            why = "a faster row" if o.confirmed else "its confirmed row (this one had no side-by-side pass)"
            console.print(f"[yellow]{','.join(map(str, r.key))}: not stored: the database keeps {why} of an "
                          "earlier run (tuner db show)[/yellow]")
        for name, err in o.setup.baseline_errors.items():
            console.print(f"[yellow]baseline {name} for {r.key}: {err}[/yellow]")
    console.print("[dim]tuned: the best config re-measured beside the untuned and native baselines "
                  "(the progress bar's search best is one earlier timing)[/dim]")


def best_records(db_url, op, gpu) -> list[dict]:
    from db import queries
    from tuner.store import open_db

    db = open_db(db_url, create=False)
    try:
        with db.session() as s:
            return queries.records(queries.best_configs(s, kernel=op, gpu_name=gpu))
    finally:
        db.dispose()


def _grouped(recs: list[dict]) -> dict[tuple[str, str, str, str], list[dict]]:
    """Records by (op, dtype, GPU or device, timing method), in stored order."""
    groups: dict[tuple[str, str, str, str], list[dict]] = {}
    for r in recs:
        env = r["environment"]
        groups.setdefault((r["kernel"], r["dtype"], env.get("gpu_name") or env["device"], r["timing"]),
                          []).append(r)
    return groups


def route_text(record: dict, within: float = 1.0) -> str | None:
    """Where `tuner serve --use-tuned --route-within W` sends a stored GEMM key's calls (the router's
    own rules: tuned kernel only if timed faster than cuBLAS, or within W of it; outside CUDA graphs
    only where the GPU gain pays the kernel's extra host time), None for ops the router does not serve.
    "graphs only": calls the engine runs eagerly stay native; the vLLM engines tuner ran captured 1 to
    128 tokens (results/vllm), so at M = 512 or 4096 (prefill) such a key serves native there.
    "this M only": a record from the router's PREFILL_M on serves no other M (a partial prefill chunk
    stays native); below it nearby M are routed too."""
    from tuner.inject import gemm_router as gr

    if record.get("kernel") not in gr.ROUTED_OPS:
        return None
    if gr.group_key(record) is None:
        return "serves: not routed (B stored K x N)"
    target = gr.record_target(record, within)
    if target == gr.NATIVE:
        return "serves: native"
    place = "graphs + eager" if gr.eager_worthwhile(record, within) else "graphs only"
    only = ", this M only" if int(record["key"].get("M", 0)) >= gr.PREFILL_M else ""
    return f"serves: {target}, {place}{only}"


def best_table(recs: list[dict], route_within: float = 1.0) -> None:
    """One table per (op, GPU, timing), 80 columns: the key as its values (the title names the
    fields; `tuner ops` explains them), never cut; the config folds onto a second line, and for the
    GEMMs the router serves, where serving sends the key (route_text)."""
    if not recs:
        console.print("no stored results")
        return
    for (op, dtype, where, timing), rows in _grouped(recs).items():
        fields = ",".join(rows[0]["key"])
        t = compact_table(f"{op} {dtype} on {where} ({timing}): key {fields}, µs",
                          [("key", "left"), ("tuned", "right"), ("native", "right"), ("x untun", "right"),
                           ("x nat", "right"), ("err", "right")])
        t.add_column("config", overflow="fold", min_width=12)
        for r in rows:
            t.add_row(",".join(str(v) for v in r["key"].values()), fmt(r["time_us"], ".1f"),
                      fmt(r["native_us"], ".1f"), fmt(r["speedup_vs_untuned"], ".2f", "x"),
                      fmt(r["speedup_vs_native"], ".2f", "x"), fmt(r["rel_error"], ".0e"),
                      "\n".join(filter(None, (short_config(r["config"]), route_text(r, route_within)))))
        console.print(t)
    console.print("[dim]x = baseline / tuned; err = relative error against native; serves: where `tuner "
                  "serve --use-tuned` sends the key; `tuner ops` explains the key fields; trials, untuned "
                  "µs, the environment: --json[/dim]")


# --- tuner profile / tuner check --------------------------------------------------------------------

def _us(v) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.1f} µs"


def _key_text(key: dict) -> str:
    if {"M", "N", "K"} <= set(key):
        batch = f" b={key['batch']}" if key.get("batch", 1) != 1 else ""
        return f"M={key['M']} N={key['N']} K={key['K']}{batch}"
    return "-" if not key else " ".join(f"{k}={v}" for k, v in key.items())


def profile_tables(outcome: dict) -> None:
    """One ranked table per mode (native, FlagGems), 80 columns: each op with its dtype, input
    shapes and GPU kernel on lines of their own, what tuner tunes it as (op and key), then the
    label, notes and the check."""
    for m in outcome["modes"]:
        mode = "FlagGems" if m["flaggems"] else "native"
        title = (f"run {m['run_id']} · {mode} · top {len(m['rows'])} of {m['row_count']} · "
                 f"total {_us(m['total_us'])} · {outcome['label']}")
        t = compact_table(title, [("#", "right")])
        t.add_column("op, dtype, calls / shapes / kernel", overflow="fold", ratio=1)
        t.add_column("tuned as", overflow="fold", max_width=19)  # "M=4096 N=3584 K=18944" folds at its spaces
        _narrow_columns(t, [("time", "right"), ("share", "right"), ("gain", "right")])
        for i, r in enumerate(m["rows"], start=1):
            kernel = r["kernel"] if len(r["kernel"]) <= 60 else r["kernel"][:57] + "..."
            what = (f"{escape(r['op'])} {r['dtype']} · {r['calls']} calls\n"
                    f"[dim]{escape(r['shapes'])}\n{escape(kernel)}[/dim]")
            tuned = ("-" if r["tunable"] in ("", "-", None, "not tunable")
                     else f"{r['tunable']}\n{_key_text(r.get('key') or {})}")
            t.add_row(str(i), what, tuned, _us(r["total_us"]), f"{r['share']:.1%}",
                      _us(r.get("predicted_gain_us")))
        console.print(t)
        console.print(f"trace: {m['trace_path']}")
        if m.get("overhead"):
            o = m["overhead"]
            console.print(f"profiler overhead: {o['ratio']:.2f}x wall time ({o['plain_s']:.3f} s plain, "
                          f"{o['profiled_s']:.3f} s profiled, +{o['analysis_s']:.3f} s analysis)")
        if m["flaggems"]:
            console.print(f"FlagGems ops excluded: {', '.join(m['exclude']) or 'none'}")
    console.print("[dim]gain: the time tuner's stored configs are predicted to save on that op[/dim]")
    for n in outcome["notes"]:
        console.print(f"[yellow]note: {n}[/yellow]")
    if outcome.get("check"):
        check_table(outcome["check"])


def check_table(rep: dict) -> None:
    """80 columns: each op with its FlagGems function, inputs and what went wrong on lines of their
    own; status and errors in columns that never wrap. Failures first."""
    order = {"crash": 0, "mismatch": 1, "skipped": 2, "pass": 3}
    rows = sorted(rep["results"], key=lambda r: (order[r["status"]], r["op"]))
    t = compact_table(f"consistency check: {rep['candidate']} vs native · " +
                      ", ".join(f"{k} {v}" for k, v in rep["counts"].items()) +
                      (f" · {rep['label']}" if rep.get("label") else ""), [])
    t.add_column("op (FlagGems function) / inputs / detail", overflow="fold")
    _narrow_columns(t, [("status", "left"), ("max abs err", "right"), ("rel err", "right")])
    colour = {"crash": "red", "mismatch": "red", "skipped": "yellow", "pass": "green"}
    for r in rows:
        detail = escape((r.get("detail") or "")[:160])  # error text: brackets are not markup
        what = (f"{escape(r['op'])} ({r.get('gems_fn') or '-'})\n[dim]{escape(r['inputs'][:120])}[/dim]"
                + (f"\n[{colour[r['status']]}]{detail}[/]" if detail else ""))
        t.add_row(what, f"[{colour[r['status']]}]{r['status']}[/]",
                  fmt(r.get("max_abs_error"), ".2e"), fmt(r.get("rel_error"), ".2e"))
    console.print(t)
    console.print(f"exclude list (failing FlagGems functions): {', '.join(rep['exclude']) or 'none'}")
    if rep.get("dropped"):
        console.print(f"[yellow]{len(rep['dropped'])} input sets not recorded (over the capture caps)[/yellow]")
    e2e = rep.get("e2e")
    if e2e:
        if e2e.get("status") == "done":
            console.print(f"end to end ({e2e['steps']} decode steps, excluded {', '.join(e2e['exclude']) or 'none'}): "
                          f"max abs logit error {e2e['max_abs_error']:.3g}, top-1 agreement {e2e['top1_agreement']:.1%}")
        else:
            console.print(f"end to end: {e2e.get('status')} {e2e.get('detail', '')}")


def engine_profile_tables(out: dict) -> None:
    """Per mode: one summary line and the top kernels (name cut to fit 80 columns)."""
    for mode, p in out.items():
        if "error" in p:
            console.print(f"[bold]{mode}[/bold]: FAILED: {p['error']}")
            continue
        console.print(f"[bold]{mode}[/bold]: kernel time {p['kernel_ms']:.1f} ms, Triton share "
                      f"{p['triton_share']:.1%}, GPU idle {p['idle_us_per_step']:.0f} µs per decode step, "
                      f"{p['graph_launches']} CUDA graph launches, profile run {p.get('profile_run_id')}")
        eager = ", ".join(f"{op} {n}" for op, n in p["eager_ops"][:6])
        console.print(f"  launched eagerly: {eager or 'nothing'}")
        for c in p.get("idle_causes", [])[:3]:  # the gaps, by the host op whose launch ended them
            op = c["op"] if len(c["op"]) <= 36 else c["op"][:35] + "…"
            console.print(f"  GPU idle {c['idle_ms']:.1f} ms ({c['late_ms']:.1f} late), {c['gaps']} gaps, "
                          f"before {escape(op)}")
        t = Table(box=None, pad_edge=False, padding=(0, 1))
        for col, just in (("kernel", "left"), ("class", "left"), ("calls", "right"), ("ms", "right"),
                          ("µs/call", "right")):
            t.add_column(col, justify=just, no_wrap=True)
        for k in p["top_kernels"]:
            name = k["name"] if len(k["name"]) <= 40 else k["name"][:39] + "…"
            t.add_row(name, k["class"], str(k["calls"]), f"{k['gpu_ms']:.2f}", f"{k['mean_us']:.1f}")
        console.print(t)
        keys = p.get("gemm_keys", [])
        eager = [g for g in keys if g["place"] == "eager"]
        if keys:  # two short lines: 80 columns
            console.print(f"  GEMM keys (tune --from-profile {p.get('profile_run_id')}): {len(eager)} eager, "
                          f"{len(keys) - len(eager)} at CUDA-graph sizes")
            top = ", ".join(f"{g['op']} {g['M']}x{g['N']}x{g['K']} {g['gpu_us'] / 1e3:.0f} ms" for g in eager[:2])
            console.print(f"  hottest: {top or '-'}")
