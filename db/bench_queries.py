"""Serving benchmark rows (`tuner bench`)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import BenchRun

_COLUMNS = ("mode", "concurrency", "output_tok_s", "output_tok_s_cold", "start_s", "autotunes", "jit_compiles")


def add_bench(session: Session, *, environment_id: int, bench_id: str, engine: str, model: str,
              rows: Iterable[Mapping[str, Any]]) -> list[BenchRun]:
    """One BenchRun per row; the columns tuner queries by, everything else in `metrics`. A row's own
    `engine` (a bench comparing engines) wins over the bench's."""
    out = []
    for r in rows:
        run = BenchRun(environment_id=environment_id, bench_id=bench_id, engine=r.get("engine") or engine,
                       model=model, **{c: r.get(c) for c in _COLUMNS},
                       metrics={k: v for k, v in r.items() if k not in (*_COLUMNS, "engine")})
        session.add(run)
        out.append(run)
    session.flush()
    return out


def bench_rows(session: Session, bench_id: str | None = None) -> list[dict[str, Any]]:
    """The rows of one bench (default: the newest), as plain dicts."""
    if bench_id is None:
        bench_id = session.scalar(select(BenchRun.bench_id).order_by(BenchRun.id.desc()).limit(1))
        if bench_id is None:
            return []
    runs = session.scalars(select(BenchRun).where(BenchRun.bench_id == bench_id).order_by(BenchRun.id))
    return [{"bench_id": r.bench_id, "engine": r.engine, "model": r.model,
             **{c: getattr(r, c) for c in _COLUMNS}, **(r.metrics or {})} for r in runs]
