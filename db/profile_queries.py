"""Reads and writes of profile runs, hot ops and consistency results. Plain data in; no torch here."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import BestConfig, ConsistencyResult, Environment, HotOp, ProfileRun

FAILING = ("mismatch", "crash")
STATUSES = ("pass", "mismatch", "crash", "skipped")

# the profiler names dtypes as torch does; tuner's kernels use short names
_SHORT_DTYPE = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}

_HOT_FIELDS = ("op", "shapes", "dtype", "kernel", "calls", "total_us", "share", "tunable", "key",
               "predicted_gain_us")


def add_profile_run(session: Session, environment: Environment, rows: Iterable[Mapping[str, Any]],
                    **fields: Any) -> ProfileRun:
    """A profile run and its hot ops; `rows` in rank order (plain dicts with the HotOp fields)."""
    run = ProfileRun(environment_id=environment.id, **fields)
    for i, r in enumerate(rows, start=1):
        run.hot_ops.append(HotOp(rank=i, **{k: r.get(k) for k in _HOT_FIELDS}))
    session.add(run)
    session.flush()
    return run


def get_profile_run(session: Session, ident: int | str) -> ProfileRun | None:
    """The run with id `ident` (an int or its digits), or the newest one for "latest"."""
    if isinstance(ident, str) and ident.strip().lower() == "latest":
        return session.scalar(select(ProfileRun).order_by(ProfileRun.id.desc()).limit(1))
    try:
        run_id = int(ident)
    except (TypeError, ValueError):
        return None
    return session.get(ProfileRun, run_id)


def profile_runs(session: Session, limit: int = 20) -> list[ProfileRun]:
    return list(session.scalars(select(ProfileRun).order_by(ProfileRun.id.desc()).limit(limit)))


def hot_ops(session: Session, run: ProfileRun | int, top: int | None = None) -> list[HotOp]:
    run_id = run if isinstance(run, int) else run.id
    q = select(HotOp).where(HotOp.profile_run_id == run_id).order_by(HotOp.rank)
    if top is not None:
        q = q.limit(top)
    return list(session.scalars(q))


def mm_best_by_mnk(session: Session, environment_id: int, dtype: str,
                   kernel: str = "mm") -> dict[tuple[int, int, int], BestConfig]:
    """Stored winners of a GEMM kernel keyed M,N,K,BT (mm, addmm) of this environment for
    nn.Linear's layout (BT=1), by (M, N, K).

    `dtype` may be the profiler's name ("bfloat16") or tuner's ("bf16").
    """
    short = _SHORT_DTYPE.get(dtype, dtype)
    rows = session.scalars(select(BestConfig).where(
        BestConfig.environment_id == environment_id, BestConfig.kernel == kernel, BestConfig.dtype == short))
    out: dict[tuple[int, int, int], BestConfig] = {}
    for r in rows:
        kv = r.key_values or {}
        if int(kv.get("BT", 1)) != 1:
            continue
        try:
            out[(int(kv["M"]), int(kv["N"]), int(kv["K"]))] = r
        except (KeyError, TypeError, ValueError):
            continue
    return out


def predicted_gain_us(calls: int, best: BestConfig, flaggems: bool) -> float | None:
    """calls x (baseline - tuned), the baseline being what runs in that mode without tuning:
    FlagGems' untuned choice when FlagGems is enabled, native torch / cuBLAS otherwise.
    None when that baseline was not timed or the tuned config is not faster."""
    base = best.untuned_us if flaggems else best.native_us
    if base is None or best.time_us is None:
        return None
    gain = calls * (base - best.time_us)
    return gain if gain > 0 else None


def add_consistency_results(session: Session, environment: Environment, results: Iterable[Mapping[str, Any]],
                            profile_run_id: int | None = None, candidate: str = "flag_gems") -> list[ConsistencyResult]:
    out = []
    for r in results:
        if r["status"] not in STATUSES:
            raise ValueError(f"unknown consistency status {r['status']!r}")
        row = ConsistencyResult(
            environment_id=environment.id, profile_run_id=profile_run_id, op=r["op"], gems_fn=r.get("gems_fn"),
            inputs=r.get("inputs", ""), status=r["status"], max_abs_error=r.get("max_abs_error"),
            rel_error=r.get("rel_error"), detail=r.get("detail"), candidate=candidate,
        )
        session.add(row)
        out.append(row)
    session.flush()
    return out


def _environment_id(session: Session, environment: Environment | int | str) -> int | None:
    if isinstance(environment, Environment):
        return environment.id
    if isinstance(environment, int):
        return environment
    env = session.scalar(select(Environment).where(Environment.fingerprint == environment))
    return env.id if env is not None else None


def latest_consistency(session: Session, environment: Environment | int | str,
                       candidate: str = "flag_gems") -> list[ConsistencyResult]:
    """The newest result of each (op, inputs) checked in this environment."""
    env_id = _environment_id(session, environment)
    return [] if env_id is None else _newest_results(session, [env_id], candidate)


def _newest_results(session: Session, env_ids: list[int], candidate: str) -> list[ConsistencyResult]:
    """The newest result of each (op, inputs) among these environments' checks."""
    rows = session.scalars(select(ConsistencyResult).where(
        ConsistencyResult.environment_id.in_(env_ids), ConsistencyResult.candidate == candidate,
    ).order_by(ConsistencyResult.id))
    newest: dict[tuple[str, str], ConsistencyResult] = {}
    for r in rows:
        newest[(r.op, r.inputs)] = r
    return sorted(newest.values(), key=lambda r: (r.op, r.id))


def _failing(results: Iterable[ConsistencyResult]) -> list[str]:
    return sorted({r.gems_fn or r.op for r in results if r.status in FAILING})


def exclude_list(session: Session, environment: Environment | int | str, candidate: str = "flag_gems") -> list[str]:
    """FlagGems function names to keep disabled (`flag_gems.enable(unused=...)`) on this environment:
    those whose newest check on some recorded input mismatched or crashed.

    `environment` is an Environment row, its id, or its fingerprint digest. An environment never
    checked gives an empty list.
    """
    return _failing(latest_consistency(session, environment, candidate))


# What decides an op's behaviour: a check's verdict holds wherever these match (installing vLLM or a
# new driver after `tuner check` changes the full fingerprint, and then no verdict applied at all)
BEHAVIOUR_FIELDS = ("device", "gpu_name", "torch", "triton", "flag_gems")


def exclude_list_matching(session: Session, running: dict[str, Any], candidate: str = "flag_gems") -> list[str]:
    """exclude_list over every environment whose BEHAVIOUR_FIELDS equal `running`'s: the newest
    verdict of each (op, inputs) among them."""
    env_ids = list(session.scalars(select(Environment.id).where(
        *(getattr(Environment, f) == running.get(f) for f in BEHAVIOUR_FIELDS))))
    return _failing(_newest_results(session, env_ids, candidate))
