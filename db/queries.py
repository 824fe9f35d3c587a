"""Reads and writes of tuner's tables. Plain dicts in, model rows out; no torch here."""

from __future__ import annotations

from typing import Any, Callable, Iterable, TypeVar

from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.models import BestConfig, Environment, TuningRun, utcnow

T = TypeVar("T")

_ENV_FIELDS = (
    "device", "gpu_name", "sm_count", "memory_bytes", "sm_clock_max_mhz", "mem_clock_max_mhz",
    "driver", "cuda", "torch", "triton", "flag_gems", "vllm", "python",
)


def get_or_create_environment(session: Session, fingerprint: str, fields: dict[str, Any]) -> Environment:
    env = session.scalar(select(Environment).where(Environment.fingerprint == fingerprint))
    if env is None:
        env = Environment(fingerprint=fingerprint, **{k: fields.get(k) for k in _ENV_FIELDS})
        session.add(env)
        session.flush()
    return env


def start_run(session: Session, environment: Environment, **fields: Any) -> TuningRun:
    run = TuningRun(environment_id=environment.id, **fields)
    session.add(run)
    session.flush()
    return run


def finish_run(session: Session, run: TuningRun, status: str, reason: str | None = None) -> None:
    run.status = status
    run.reason = reason
    run.finished_at = utcnow()


def beat_run(session: Session, run_id: int) -> None:
    """The live run's heartbeat (see mark_stale_runs)."""
    session.execute(update(TuningRun).where(TuningRun.id == run_id).values(heartbeat_at=utcnow()))


def mark_stale_runs(session: Session, grace_s: float) -> list[int]:
    """Runs still 'running' whose heartbeat (or start, before their first beat) is older than
    grace_s: their process was killed (kill -9, a lost host). They become 'stale'; their ids."""
    cutoff = utcnow() - timedelta(seconds=grace_s)
    last = func.coalesce(TuningRun.heartbeat_at, TuningRun.started_at)
    rows = list(session.scalars(select(TuningRun).where(TuningRun.status == "running", last < cutoff)))
    for run in rows:
        seen = run.heartbeat_at or run.started_at
        run.status = "stale"
        run.reason = f"no heartbeat since {seen:%Y-%m-%d %H:%M:%S} UTC: its process was killed"
        run.finished_at = utcnow()
    return [r.id for r in rows]


def key_text(key_values: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in key_values.items())


SourceNow = Callable[[dict], str]  # a stored config -> the hash of the source it runs today


def upsert_best(session: Session, *, environment_id: int, kernel: str, key_values: dict[str, int],
                dtype: str, source_now: SourceNow | None = None, **fields: Any) -> BestConfig:
    """Insert or replace the best config of (environment, kernel, key, dtype); returns the stored row
    (rules: _upsert)."""
    return _upsert(session, environment_id=environment_id, kernel=kernel, key_values=key_values, dtype=dtype,
                   source_now=source_now, **fields)[0]


def _upsert(session: Session, *, environment_id: int, kernel: str, key_values: dict[str, int],
            dtype: str, source_now: SourceNow | None = None, **fields: Any) -> tuple[BestConfig, bool]:
    """Insert or replace the best config of (environment, kernel, key, dtype): (the stored row,
    whether these fields are in it now).

    A row is replaced only by a faster one (several processes tuning one key each store their best,
    and the last to finish no longer wins regardless), except that
    - a row whose kernel source changed since it was stored is replaced by one of another source
      (its timings are of a kernel that no longer runs). `source_now` (the op's source hash of a
      config, from the caller: db never imports the kernels) tells a changed source from another
      variant's (each variant hashes its own module): without it every other hash replaces. With
      it, a row timed on old code (a merged database's) never replaces a current one;
    - a confirmed row (`confirmed=True`: finalists re-timed side by side with the baselines)
      replaces a provisional one (`confirmed=False`: a search timing stored as the search
      improved), faster or not: one pass's ratios beat a mix of passes, and the confirmation
      re-timed the study's best configs, the provisional one among them;
    - a provisional row never replaces a confirmed one: a search timing and a side-by-side one
      are not compared (the confirmation at the end of that search decides).
    Two first inserts at once: one gets IntegrityError (the unique key); its caller rolls back and
    calls again (`store_best`).
    """
    key = key_text(key_values)
    row = session.scalar(
        select(BestConfig).where(
            BestConfig.environment_id == environment_id,
            BestConfig.kernel == kernel,
            BestConfig.key == key,
            BestConfig.dtype == dtype,
        ).with_for_update()  # PostgreSQL: the compare-and-replace below is atomic (SQLite: BEGIN IMMEDIATE)
    )
    if row is None:
        row = BestConfig(environment_id=environment_id, kernel=kernel, key=key, key_values=key_values, dtype=dtype)
        session.add(row)
    elif not _replaces(fields, row, source_now):
        return row, False  # a slower winner of another run: the stored one stays
    for name, value in fields.items():
        setattr(row, name, value)
    row.updated_at = utcnow()
    session.flush()
    return row, True


def _replaces(new: dict[str, Any], row: BestConfig, source_now: SourceNow | None = None) -> bool:
    """Whether `new` (upsert_best's fields) replaces the stored `row` (rules: _upsert)."""
    if new.get("kernel_source_hash") != row.kernel_source_hash:
        row_stale = _stale(row.config, row.kernel_source_hash, source_now)
        if source_now is not None and not row_stale and _stale(new.get("config"), new.get("kernel_source_hash"),
                                                               source_now):
            return False  # a row timed on old code (a merged database's) never replaces a current one
        if row_stale:
            return True
    confirmed = new.get("confirmed", True)
    if confirmed and not row.confirmed:
        return True
    if not confirmed and row.confirmed:
        return False
    return new.get("time_us") is None or row.time_us is None or new["time_us"] < row.time_us


def _stale(config: dict | None, source_hash: str | None, source_now: SourceNow | None) -> bool:
    """Whether a row's kernel source is not the one its config runs today (unknown: stale)."""
    if source_now is None:
        return True
    try:
        return source_now(config) != source_hash
    except Exception:  # a variant that no longer exists, or a runtime that cannot load here
        return True


def store_best(sessions: Callable[[], Session], **kwargs: Any) -> bool:
    """upsert_best in its own transaction, once more after a concurrent first insert of the key;
    whether these fields are the stored best now (False: the stored row was preferred)."""
    return in_transaction(sessions, lambda s: _upsert(s, **kwargs)[1])


def in_transaction(sessions: Callable[[], Session], work: Callable[[Session], T]) -> T:
    """`work` in a transaction of its own, committed; once more when another process inserted the
    same unique row first (the IntegrityError's rollback undoes all of `work`; the second try
    finds the row). 8 tune processes starting at once on a fresh database: 1 of 8 failed on the
    environment row before this."""
    from sqlalchemy.exc import IntegrityError

    for attempt in range(2):
        with sessions() as s:
            try:
                out = work(s)
                s.commit()
                return out
            except IntegrityError:
                s.rollback()
                if attempt:
                    raise
    raise AssertionError("unreachable")


def best_configs(session: Session, kernel: str | None = None, gpu_name: str | None = None) -> list[BestConfig]:
    q = select(BestConfig).join(Environment)
    if kernel:
        q = q.where(BestConfig.kernel == kernel)
    if gpu_name:
        q = q.where(Environment.gpu_name == gpu_name)
    q = q.order_by(BestConfig.kernel, BestConfig.dtype, BestConfig.id)
    return list(session.scalars(q))


def best_as_record(row: BestConfig) -> dict[str, Any]:
    """A best config as the plain record that export / injection consume."""
    env = row.environment
    return {
        "kernel": row.kernel,
        "key": dict(row.key_values),
        "dtype": row.dtype,
        "config": dict(row.config),
        "time_us": row.time_us,
        "untuned_us": row.untuned_us,
        "native_us": row.native_us,
        "baselines_us": dict(row.baselines_us or {}),
        "speedup_vs_untuned": row.speedup_vs_untuned,
        "speedup_vs_native": row.speedup_vs_native,
        "max_abs_error": row.max_abs_error,
        "rel_error": row.rel_error,
        "trials_used": row.trials_used,
        "timing": row.timing,
        "kernel_source_hash": row.kernel_source_hash,
        "study_name": row.study_name,
        "confirmed": row.confirmed,
        "updated_at": row.updated_at.isoformat(timespec="seconds"),
        "environment": {k: getattr(env, k) for k in _ENV_FIELDS} | {"fingerprint": env.fingerprint},
    }


def records(rows: Iterable[BestConfig]) -> list[dict[str, Any]]:
    return [best_as_record(r) for r in rows]


def stored_records(url: str | None) -> list[dict[str, Any]]:
    """Every stored best config as `records` gives them, read from the database at `url` (a URL,
    a SQLite path, None: the default) without creating or migrating it: a missing or foreign
    database raises db.DatabaseUnusable."""
    from db.engine import open_database

    db = open_database(url, create=False)
    try:
        with db.session() as s:
            return records(best_configs(s))
    finally:
        db.dispose()
