"""What `tuner bench` prints (a table that fits 80 columns) and draws (a PNG of output tokens/s)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.table import Table

from tuner.report import compact_table, fmt

MODE_COLOURS = {"native": "#4c72b0", "untuned": "#c44e52", "tuned": "#55a868"}
SHORT = {"flagscale": "fs"}  # engine names in the table's first column (80 columns: "fs/untuned")


def _short(label: str) -> str:
    engine, sep, mode = label.rpartition("/")
    return f"{SHORT.get(engine, engine)}/{mode}" if sep else label


def bench_table(report: Mapping[str, Any]) -> Table:
    """One row per (mode, concurrency); 10 narrow columns (< 80 characters wide)."""
    fs = any(r.get("engine") == "flagscale" for r in report["runs"]) and \
        len({r.get("engine") for r in report["runs"]}) > 1
    t = compact_table("tuner bench, fs = flagscale: tok/s (warm), x native, cold; TTFT/TPOT ms" if fs else
                      "tuner bench: output tokens/s (warm), x native, cold; TTFT/TPOT ms",
                      [("mode", "left"), ("c", "right"), ("tok/s", "right"), ("x nat", "right"),
                       ("cold", "right"), ("TTFT50", "right"), ("TPOT50", "right"), ("TPOT99", "right"),
                       ("start", "right"), ("tune/JIT", "right")], show_edge=False)
    for r in report["runs"]:
        t.add_row(_short(r.get("label", r["mode"])), str(r["concurrency"]), fmt(r["output_tok_s"], ".0f"),
                  fmt(r.get("vs_native"), ".2f"),
                  fmt(r.get("output_tok_s_cold"), ".0f"), fmt(r.get("ttft_ms_p50"), ".1f"),
                  fmt(r.get("tpot_ms_p50"), ".2f"), fmt(r.get("tpot_ms_p99"), ".2f"), fmt(r.get("start_s"), ".0f"),
                  f"{fmt(r.get('autotunes'), '.0f')}/{fmt(r.get('jit_compiles'), '.0f')}")
    return t


def agreement_lines(report: Mapping[str, Any]) -> list[str]:
    lines = []
    for mode, a in report.get("agreement", {}).items():
        native = f"{mode.rsplit('/', 1)[0]}/native" if "/" in mode else "native"
        if a.get("top1_agreement") is not None:
            lines.append(f"{mode} vs {native}, teacher-forced on {a['positions']} prompt positions: top-1 "
                         f"agreement {a['top1_agreement']:.1%}, max |d logprob| {a['max_abs_dlogprob']:.3f}")
        small = a.get("small_m") or {}
        if small.get("top1_agreement") is not None:
            lines.append(f"{mode} vs {native}, {small['positions']} positions of short prompts (M <= 128, the "
                         f"decode sizes): top-1 {small['top1_agreement']:.1%}, max |d logprob| "
                         f"{small['max_abs_dlogprob']:.3f}")
    lines += rounds_lines(report)
    lines += engine_lines(report)
    lines += moe_lines(report)
    for mode, err in report.get("errors", {}).items():
        lines.append(f"{mode}: FAILED: {err}")
    return lines


def rounds_lines(report: Mapping[str, Any]) -> list[str]:
    """A bench in rounds (`--rounds`): per run and concurrency, the median ratio to native and each
    round's, so a gap is read against the spread between engine starts (the table shows medians)."""
    n = report.get("rounds") or 1
    if n < 2:
        return []
    lines = [f"{n} rounds, each mode a fresh engine per round; tok/s and x native are medians:"]
    for r in report.get("runs", []):
        ratios = r.get("vs_native_rounds") or []
        if r["mode"] != "native" and ratios:
            lines.append(f"  {r['label']}, {r['concurrency']} concurrent: {r['vs_native']:.3f}x native, rounds "
                         + " ".join(f"{v:.3f}" for v in ratios)
                         + (f" (in {len(ratios)} of {n})" if len(ratios) < n else ""))
    return lines


def engine_lines(report: Mapping[str, Any], within: float = 0.03) -> list[str]:
    """The engines compared (`--engine vllm,flagscale`): each run's output tokens/s over the reference
    engine's in the same mode and concurrency, against issue 15's target (within 3%), and their
    teacher-forced agreement (the same vLLM under two launchers should agree as a rerun does)."""
    lines = []
    for r in report.get("runs", []):
        v = r.get("vs_engine")
        if v is not None:
            lines.append(f"{r['label']} vs {r['reference_engine']}/{r['mode']}, {r['concurrency']} concurrent: "
                         f"{v:.3f}x output tokens/s (within {within:.0%}: {'yes' if abs(v - 1) <= within else 'NO'})")
    for name, a in report.get("engine_agreement", {}).items():
        if a.get("top1_agreement") is not None:
            lines.append(f"{name} vs {a['reference']}, teacher-forced on {a['positions']} prompt positions: "
                         f"top-1 agreement {a['top1_agreement']:.1%}, max |d logprob| {a['max_abs_dlogprob']:.3f}")
    return lines


def _moe_file(key: str, lines: int) -> str:
    from tuner.serving.bench_stats import moe_source

    source = moe_source(key)
    what = {"tuner": f"tuner's runtime folder {Path(key).name}", "vllm": f"vLLM's shipped {Path(key).name}",
            "default": "vLLM's default config (no file found)"}.get(source, key)
    return f"{what} ({lines} line{'s' if lines > 1 else ''})"


def moe_lines(report: Mapping[str, Any]) -> list[str]:
    """Per run, the fused-MoE config files vLLM said its MoE layers read (engine log lines; a
    model without MoE layers has none, and no line here)."""
    return [f"{run}: MoE configs served: {'; '.join(_moe_file(k, n) for k, n in files.items())}"
            for run, files in (report.get("moe_configs") or {}).items() if files]


def bench_chart(report: Mapping[str, Any], path: str | Path) -> Path | None:
    """Grouped bars of warm output tokens/s by concurrency, one bar per mode, the ratio to native
    written on each; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    runs = report["runs"]
    conc = sorted({r["concurrency"] for r in runs})
    labels = list(dict.fromkeys(r.get("label", r["mode"]) for r in runs))
    mode_of = {r.get("label", r["mode"]): r["mode"] for r in runs}
    first = runs[0].get("engine") if runs else None  # the reference engine: plain bars, others hatched
    hatch = {r.get("label", r["mode"]): "" if r.get("engine") == first else "//" for r in runs}
    fig, axes = plt.subplots(1, len(conc), figsize=(4 * len(conc), 3.6), squeeze=False)
    for ax, c in zip(axes[0], conc):
        rows = {r.get("label", r["mode"]): r for r in runs if r["concurrency"] == c}
        vals = [rows[m]["output_tok_s"] if m in rows else 0 for m in labels]
        bars = ax.bar(labels, vals, color=[MODE_COLOURS[mode_of[m]] for m in labels],
                      hatch=[hatch[m] for m in labels])
        if len(labels) > 3:  # engine/mode labels: slanted, each ending under its bar, room above the ratios
            ax.tick_params(axis="x", labelrotation=30, labelsize=8)
            for tick in ax.get_xticklabels():
                tick.set_horizontalalignment("right")
                tick.set_rotation_mode("anchor")
            ax.set_ylim(top=1.12 * max(vals or [0]) or None)
        for bar, m in zip(bars, labels):
            ratio = rows.get(m, {}).get("vs_native")
            if ratio is not None:
                ax.annotate(f"{ratio:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=9)
        ax.set_title(f"{c} concurrent request{'s' if c > 1 else ''}")
        ax.set_ylabel("output tokens/s (warm)")
    engines = list(dict.fromkeys(r.get("engine") for r in runs))
    if len(engines) > 1:  # the labels are on the bars: the title names the engines and which is hatched
        title = (f"{' vs '.join(map(str, engines))} ({', '.join(map(str, engines[1:]))} hatched): output tokens/s, "
                 f"x native per engine")
    else:
        title = f"{report.get('request', {}).get('engine', 'vllm')}: {' vs '.join(labels)} (x native)"
    fig.suptitle(title, fontsize=10 if len(labels) > 3 else None)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
