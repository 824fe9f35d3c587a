"""The report's PNG charts (matplotlib, Agg): one function per chart, each writes one file."""
from __future__ import annotations

from pathlib import Path

CLASS_COLOURS = {"cublas": "#4c72b0", "attention": "#8172b2", "triton/flaggems": "#c44e52",
                 "triton/inductor": "#dd8452", "triton/tuner": "#55a868", "triton/other": "#da8bc3",
                 "torch": "#937860", "cutlass": "#64b5cd", "nccl": "#8c8c8c", "other": "#cccccc"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def speedups(op: str, gpu: str, records: list[dict], path: Path) -> Path:
    """Per key: native / tuned and untuned / tuned (above 1: tuned is faster), 1.0 marked."""
    import numpy as np

    plt = _plt()
    keys = [",".join(str(v) for v in r["key"].values()) for r in records]
    nan = float("nan")  # no baseline: no bar
    vs_native = [r["speedup_vs_native"] or nan for r in records]
    vs_untuned = [r["speedup_vs_untuned"] or nan for r in records]
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(keys) + 2), 4))
    # bars grow from 1.0: up where tuned wins, down where it loses
    ax.bar(x - 0.2, [v - 1 for v in vs_native], 0.4, bottom=1.0, label="native / tuned", color="#4c72b0")
    ax.bar(x + 0.2, [v - 1 for v in vs_untuned], 0.4, bottom=1.0, label="FlagGems untuned / tuned", color="#c44e52")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(x, keys, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("speedup of the tuned kernel (x)")
    timing = {r["timing"] for r in records}
    note = " (interpreter wall time, not GPU speed)" if timing == {"interpreter-wall"} else ""
    ax.set_title(f"{op} on {gpu}: key {','.join(records[0]['key'])}{note}")
    ax.legend(fontsize=8)
    return _save(fig, path)


def convergence(op: str, studies: list[dict], path: Path) -> Path:
    """Each study's best-so-far over measured configs: % above its final best (0 = found)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for s in studies:
        final = s["curve"][-1]
        ax.plot(range(1, len(s["curve"]) + 1), [100 * (v / final - 1) for v in s["curve"]], marker=".",
                linewidth=1, label=s["key"])
    ax.set_xlabel("configs measured")
    ax.set_ylabel("best so far: % slower than the final best")
    ax.set_title(f"{op}: search convergence ({len(studies)} keys)")
    if len(studies) <= 12:
        ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def profile(p: dict, path: Path) -> Path:
    """Left: GPU time by kernel class (the Triton share in the title); right: the top rows."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1, 2]})
    classes = list(p["shares"])
    left.barh(classes[::-1], [100 * p["shares"][c] for c in classes[::-1]],
              color=[CLASS_COLOURS.get(c, "#cccccc") for c in classes[::-1]])
    left.set_xlabel("% of GPU kernel time")
    share = p["triton_share"]
    left.set_title("by class" + (f" (Triton {100 * share:.1f}%)" if share is not None else ""), fontsize=9)
    rows = p["rows"][::-1]
    n = len(rows)  # ranks keep two names cut to the same text apart
    labels = [f"{n - i}. " + (r["kernel"] if len(r["kernel"]) <= 40 else r["kernel"][:39] + "…")
              for i, r in enumerate(rows)]
    right.barh(labels, [r["total_us"] / 1e3 for r in rows], color=[CLASS_COLOURS.get(r["class"], "#cccccc")
                                                                     for r in rows])
    right.tick_params(axis="y", labelsize=7)
    right.set_xlabel("ms")
    right.set_title(f"top {len(rows)} by GPU time (coloured by class)", fontsize=9)
    mode = "FlagGems" if p["flaggems"] else "native"
    fig.suptitle(f"profile run {p['id']}: {p['workloads']}, {mode}, {p['gpu']}", fontsize=10)
    return _save(fig, path)


def bench(rows: list[dict], path: Path) -> Path | None:
    """The serving bench's chart (tuner bench's own): bars by run label (engine/mode when the bench
    compared engines, see collect.label_bench), the engines in the title."""
    from tuner.reporting.collect import bench_engines
    from tuner.serving.bench_report import bench_chart

    return bench_chart({"runs": rows, "request": {"engine": ",".join(bench_engines(rows))}}, path)
