"""The report page: index.html (inline CSS, no scripts, nothing fetched) beside its PNGs."""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from tuner.report import fmt
from tuner.reporting import plots
from tuner.reporting.collect import ReportData, bench_engines

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}th,td{padding:2px 8px;text-align:right}
th{border-bottom:1px solid #888}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.win{color:#1a7f37}.loss{color:#b42318}.note{color:#666;font-size:13px}"""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:60]


def _ratio(v: float | None) -> str:
    if v is None:
        return "-"
    return f'<span class="{"win" if v > 1 else "loss"}">{v:.2f}x</span>'


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _best_section(data: ReportData, out: Path) -> list[str]:
    parts = ["<h2>Tuned kernels: tuned vs FlagGems untuned vs native</h2>"]
    for (op, gpu), recs in data.best.items():
        png = plots.speedups(op, gpu, recs, out / f"speedup_{_slug(op + '_' + gpu)}.png")
        rows = [[html.escape(",".join(str(v) for v in r["key"].values())), r["dtype"], fmt(r["time_us"], ".1f"),
                 fmt(r["untuned_us"], ".1f"), fmt(r["native_us"], ".1f"), _ratio(r["speedup_vs_untuned"]),
                 _ratio(r["speedup_vs_native"]), html.escape(r["timing"])] for r in recs]
        parts += [f"<h3>{html.escape(op)} on {html.escape(gpu)}</h3>", f'<img src="{png.name}" alt="speedups">',
                  _table([f"key {','.join(recs[0]['key'])}", "dtype", "tuned µs", "untuned µs", "native µs",
                          "x untuned", "x native", "timing"], rows)]
    return parts


def _search_section(data: ReportData, out: Path) -> list[str]:
    parts = ["<h2>Searches: best so far against configs measured</h2>"]
    for op, studies in data.searches.items():
        png = plots.convergence(op, studies, out / f"search_{_slug(op)}.png")
        rows = [[html.escape(s["key"]), str(len(s["curve"])), fmt(s["curve"][0], ".1f"), fmt(s["curve"][-1], ".1f"),
                 str(next(i for i, v in enumerate(s["curve"], 1) if v <= s["curve"][-1] * 1.02))]
                for s in studies]
        parts += [f"<h3>{html.escape(op)}</h3>", f'<img src="{png.name}" alt="convergence">',
                  _table(["key", "measured", "first µs", "best µs", "within 2% after"], rows)]
    return parts


def _profile_section(data: ReportData, out: Path) -> list[str]:
    parts = ["<h2>Where the GPU time goes (newest profile runs)</h2>"]
    for p in data.profiles:
        png = plots.profile(p, out / f"profile_{p['id']}.png")
        share = "-" if p["triton_share"] is None else f"{100 * p['triton_share']:.1f}%"
        parts += [f"<h3>profile run {p['id']}: {html.escape(p['workloads'])} · "
                  f"{'FlagGems' if p['flaggems'] else 'native'} · {html.escape(str(p['gpu']))} · "
                  f"total {p['total_us'] / 1e3:.1f} ms · Triton share {share}</h3>",
                  f'<img src="{png.name}" alt="profile">']
    return parts


def _bench_section(data: ReportData, out: Path) -> list[str]:
    rows = data.bench
    png = plots.bench(rows, out / "bench.png")
    engines = bench_engines(rows)
    many = len(engines) > 1  # engines compared: which engine each row is, and its ratio to the first
    ref = next((r["reference_engine"] for r in rows if r.get("reference_engine")), engines[0])
    header = ["mode", "concurrency", "output tok/s", "x native", "start s", "autotunes"]
    if many:
        header = ["engine", *header[:4], f"x {ref}", *header[4:]]
    body = []
    for r in rows:
        cells = [html.escape(str(r["mode"])), str(r["concurrency"]), fmt(r["output_tok_s"], ".1f"),
                 fmt(r.get("vs_native"), ".3f"), fmt(r.get("start_s"), ".1f"), fmt(r.get("autotunes"), ".0f")]
        if many:
            cells = [html.escape(str(r.get("engine"))), *cells[:4], fmt(r.get("vs_engine"), ".3f"), *cells[4:]]
        body.append(cells)
    bench_id = html.escape(str(rows[0].get("bench_id", "")))
    return [f"<h2>Serving bench {bench_id} ({html.escape(', '.join(engines))})</h2>",
            *([f'<img src="{png.name}" alt="bench">'] if png else []), _table(header, body)]


def write(data: ReportData, out: Path) -> Path:
    """index.html and its PNGs in `out` (created); returns the page's path."""
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>tuner report</h1><p class=note>database: {html.escape(data.source)}</p>"]
    if data.best:
        parts += _best_section(data, out)
    if data.searches:
        parts += _search_section(data, out)
    if data.profiles:
        parts += _profile_section(data, out)
    if data.bench:
        parts += _bench_section(data, out)
    page = out / "index.html"
    page.write_text(f"<!doctype html><html><head><meta charset=utf-8><title>tuner report</title>"
                    f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    return page
