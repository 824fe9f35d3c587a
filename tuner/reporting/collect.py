"""What `tuner report` shows, read from the database: plain dicts and lists, no plotting here.

- per (op, GPU): every stored best config with its tuned, untuned and native timings;
- per Optuna study (one key): the search's best-so-far after each measured config;
- the newest profile runs: their top rows, GPU time by kernel class and the Triton share;
- the newest serving bench (`tuner bench`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ReportData:
    best: dict[tuple[str, str], list[dict]] = field(default_factory=dict)  # (op, GPU) -> records
    searches: dict[str, list[dict]] = field(default_factory=dict)  # op -> [{key, curve: [µs...]}]
    profiles: list[dict] = field(default_factory=list)
    bench: list[dict] = field(default_factory=list)
    source: str = ""  # the database's URL, password hidden

    @property
    def empty(self) -> bool:
        return not (self.best or self.searches or self.profiles or self.bench)


def best_by_op(records: list[dict]) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        env = r["environment"]
        out.setdefault((r["kernel"], env.get("gpu_name") or env["device"]), []).append(r)
    return out


def best_so_far(trials: list[Any]) -> list[float]:
    """The best µs after each measured config, in the order they were measured: trials that ran
    and passed the check (status "ok"); re-proposed duplicates and penalised failures are not
    measurements."""
    curve: list[float] = []
    for t in sorted(trials, key=lambda t: t.number):
        attrs = t.user_attrs
        if t.value is None or attrs.get("duplicate") or attrs.get("status") != "ok":
            continue
        curve.append(min(t.value, curve[-1]) if curve else t.value)
    return curve


def searches(url: str, limit: int = 24) -> dict[str, list[dict]]:
    """op -> the curves of its studies (at most `limit` per op), from Optuna's tables in the DB."""
    import optuna
    from optuna.trial import TrialState

    from tuner.store import optuna_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna_storage(url)
    out: dict[str, list[dict]] = {}
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        op, _, rest = summary.study_name.partition("|")
        if not rest or len(out.get(op, [])) >= limit:
            continue
        key = rest.split("|")[0]
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        curve = best_so_far(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if curve:
            out.setdefault(op, []).append({"key": key, "study": summary.study_name, "curve": curve})
    return out


def profile_summary(run: Any, rows: list[Any], top: int = 10) -> dict[str, Any]:
    """A profile run's top rows and its GPU time by kernel class (engine runs store theirs; the
    workload profiler's rows are classed here by kernel name) with the Triton share."""
    from tuner.profiling.engine_trace import classify, flaggems_kernel_names

    opts = run.options or {}
    names = flaggems_kernel_names()
    if "share_by_class" in opts:
        shares, triton = dict(opts["share_by_class"]), opts.get("triton_share")
    else:
        total = sum(r.total_us for r in rows) or 1.0
        shares = {}
        for r in rows:
            cls = classify(r.kernel, names)
            shares[cls] = shares.get(cls, 0.0) + r.total_us / total
        triton = sum(v for k, v in shares.items() if k.startswith("triton"))
    kernel_rows = [r for r in rows if not r.tunable]  # engine runs append GEMM keys after the kernels
    return {"id": run.id, "workloads": run.workloads, "flaggems": run.flaggems, "device": run.device,
            "gpu": run.environment.gpu_name or run.environment.device, "total_us": run.total_us,
            "triton_share": triton, "shares": dict(sorted(shares.items(), key=lambda kv: -kv[1])),
            "rows": [{"op": r.op, "kernel": r.kernel, "class": classify(r.kernel, names), "calls": r.calls,
                      "total_us": r.total_us, "share": r.share} for r in (kernel_rows or rows)[:top]]}


def bench_engines(rows: list[dict]) -> list[str]:
    """The engines of one bench's rows, in their order (the first is the reference)."""
    return list(dict.fromkeys(str(r.get("engine")) for r in rows))


def label_bench(rows: list[dict]) -> list[dict]:
    """Each row's run label as `tuner bench` prints it: engine/mode when the bench compared engines
    (`--engine vllm,flagscale`), the mode alone otherwise."""
    many = len(bench_engines(rows)) > 1
    return [{**r, "label": f"{r.get('engine')}/{r['mode']}" if many else r["mode"]} for r in rows]


def collect(db_url: str | None, profiles: int = 3) -> ReportData:
    """Everything the report shows; the newest `profiles` profile runs."""
    from sqlalchemy import select

    from db import bench_queries, queries, shown_url
    from db import profile_queries as pq
    from db.models import ProfileRun
    from tuner.store import open_db

    db = open_db(db_url, create=False)
    try:
        data = ReportData()
        with db.session() as s:
            data.best = best_by_op(queries.records(queries.best_configs(s)))
            runs = s.scalars(select(ProfileRun).order_by(ProfileRun.id.desc()).limit(profiles))
            data.profiles = [profile_summary(run, pq.hot_ops(s, run)) for run in runs]
            data.bench = label_bench(bench_queries.bench_rows(s))
        data.searches = searches(db.url)
        data.source = shown_url(db.url)
        return data
    finally:
        db.dispose()

