"""SQLAlchemy models of tuner's own tables.

Every table is prefixed `tuner_` because the same database also holds Optuna's tables
(studies, trials, ...): one URL serves both, so `optuna-dashboard <url>` shows every study.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, true, BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

VERSION_TABLE = "tuner_alembic_version"  # tuner's Alembic revision; Optuna's migrations own `alembic_version`


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Environment(Base):
    """The machine and software a result was measured on (its fingerprint)."""

    __tablename__ = "tuner_environments"

    id: Mapped[int] = mapped_column(primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    device: Mapped[str] = mapped_column(String(16))  # "cuda" or "cpu"
    gpu_name: Mapped[str | None] = mapped_column(String(128))
    sm_count: Mapped[int | None] = mapped_column(Integer)
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sm_clock_max_mhz: Mapped[int | None] = mapped_column(Integer)
    mem_clock_max_mhz: Mapped[int | None] = mapped_column(Integer)
    driver: Mapped[str | None] = mapped_column(String(64))
    cuda: Mapped[str | None] = mapped_column(String(32))
    torch: Mapped[str] = mapped_column(String(64))
    triton: Mapped[str] = mapped_column(String(32))
    flag_gems: Mapped[str | None] = mapped_column(String(32))
    vllm: Mapped[str | None] = mapped_column(String(32))
    python: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class TuningRun(Base):
    """One `tuner tune` invocation over one or more keys."""

    __tablename__ = "tuner_tuning_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    environment_id: Mapped[int] = mapped_column(ForeignKey("tuner_environments.id"))
    kernel: Mapped[str] = mapped_column(String(64))
    sampler: Mapped[str] = mapped_column(String(16))
    device: Mapped[str] = mapped_column(String(16))
    trials_budget: Mapped[int | None] = mapped_column(Integer)
    timeout_s: Mapped[float | None] = mapped_column(Float)
    compile_workers: Mapped[int] = mapped_column(Integer, default=0)
    # "running" until it ends; "done", "failed" (with reason) or "interrupted" after
    status: Mapped[str] = mapped_column(String(16), default="running")
    reason: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    # written every few seconds while the run lives; a 'running' row whose heartbeat is older than
    # the grace period is marked 'stale' by the next tune (its process was killed)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    owner: Mapped[str | None] = mapped_column(String(128))  # "host:pid" of the tune process

    environment: Mapped[Environment] = relationship()


class Claim(Base):
    """A config of a study taken by one process before it measures it. The unique key makes the
    INSERT itself the lock: of several processes (on one host or many) asking for one config,
    exactly one measures it. Released only when its trial ends unmeasured (interrupted, or its
    process was killed), so the config is measured later."""

    __tablename__ = "tuner_claims"
    __table_args__ = (UniqueConstraint("study_name", "config_hash", name="uq_claim"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_name: Mapped[str] = mapped_column(String(256))
    config_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the canonical config text
    config: Mapped[str] = mapped_column(Text)  # the canonical config text
    trial_number: Mapped[int] = mapped_column(Integer)  # the Optuna trial that measures it
    owner: Mapped[str] = mapped_column(String(128))  # "host:pid"
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class BestConfig(Base):
    """The best config of one (environment, kernel, key, dtype), with the baselines timed in the
    same worker run."""

    __tablename__ = "tuner_best_configs"
    __table_args__ = (UniqueConstraint("environment_id", "kernel", "key", "dtype", name="uq_best_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    environment_id: Mapped[int] = mapped_column(ForeignKey("tuner_environments.id"))
    run_id: Mapped[int] = mapped_column(ForeignKey("tuner_tuning_runs.id"))
    kernel: Mapped[str] = mapped_column(String(64))
    kernel_source_hash: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(256))  # "M=1,N=4608,K=3584"
    key_values: Mapped[dict] = mapped_column(JSON)
    dtype: Mapped[str] = mapped_column(String(8))
    config: Mapped[dict] = mapped_column(JSON)
    time_us: Mapped[float] = mapped_column(Float)
    untuned_us: Mapped[float | None] = mapped_column(Float)  # what the runtime picks untuned
    native_us: Mapped[float | None] = mapped_column(Float)  # torch / cuBLAS
    # every baseline timed beside the search, by name (e.g. vLLM's shipped MoE config)
    baselines_us: Mapped[dict | None] = mapped_column(JSON)
    speedup_vs_untuned: Mapped[float | None] = mapped_column(Float)
    speedup_vs_native: Mapped[float | None] = mapped_column(Float)
    max_abs_error: Mapped[float] = mapped_column(Float)
    rel_error: Mapped[float] = mapped_column(Float)
    trials_used: Mapped[int] = mapped_column(Integer)
    timing: Mapped[str] = mapped_column(String(32))  # "cuda-graph" or "interpreter-wall"
    study_name: Mapped[str] = mapped_column(String(256))
    # False while the row holds a search timing stored as the search improved; True once the
    # finalists were re-timed side by side with the baselines (what a finished key stores)
    confirmed: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    environment: Mapped[Environment] = relationship()


class ProfileRun(Base):
    """One profiled pass over the workloads, natively or with FlagGems enabled."""

    __tablename__ = "tuner_profile_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    environment_id: Mapped[int] = mapped_column(ForeignKey("tuner_environments.id"))
    workloads: Mapped[str] = mapped_column(String(64))  # "text,image"
    scale: Mapped[float] = mapped_column(Float)  # 1.0 = the real model's shapes
    dtype: Mapped[str] = mapped_column(String(16))
    device: Mapped[str] = mapped_column(String(16))
    time_source: Mapped[str] = mapped_column(String(8))  # "cuda" (kernel time) or "cpu" (op self time)
    flaggems: Mapped[bool] = mapped_column(Boolean)  # profiled with FlagGems enabled, else native
    options: Mapped[dict] = mapped_column(JSON)  # RequestOptions, exclude list, ...
    model: Mapped[dict] = mapped_column(JSON)  # workload.describe()
    trace_path: Mapped[str | None] = mapped_column(Text)
    total_us: Mapped[float] = mapped_column(Float)
    overhead_ratio: Mapped[float | None] = mapped_column(Float)  # profiled / plain wall time
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    environment: Mapped[Environment] = relationship()
    hot_ops: Mapped[list["HotOp"]] = relationship(back_populates="profile_run", order_by="HotOp.rank",
                                                  cascade="all, delete-orphan")


class HotOp(Base):
    """One ranked (op, shapes, dtype, kernel) row of a profile run."""

    __tablename__ = "tuner_hot_ops"

    id: Mapped[int] = mapped_column(primary_key=True)
    profile_run_id: Mapped[int] = mapped_column(ForeignKey("tuner_profile_runs.id"), index=True)
    rank: Mapped[int] = mapped_column(Integer)  # 1 = most time
    op: Mapped[str] = mapped_column(String(128))
    shapes: Mapped[str] = mapped_column(Text)  # JSON list of input shapes
    dtype: Mapped[str] = mapped_column(String(16))
    kernel: Mapped[str] = mapped_column(Text)
    calls: Mapped[int] = mapped_column(Integer)
    total_us: Mapped[float] = mapped_column(Float)
    share: Mapped[float] = mapped_column(Float)
    tunable: Mapped[str] = mapped_column(String(32))
    key: Mapped[dict | None] = mapped_column(JSON)
    predicted_gain_us: Mapped[float | None] = mapped_column(Float)

    profile_run: Mapped[ProfileRun] = relationship(back_populates="hot_ops")


class ConsistencyResult(Base):
    """One FlagGems op on one recorded input set, against the native op."""

    __tablename__ = "tuner_consistency_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    profile_run_id: Mapped[int | None] = mapped_column(ForeignKey("tuner_profile_runs.id"))
    environment_id: Mapped[int] = mapped_column(ForeignKey("tuner_environments.id"), index=True)
    op: Mapped[str] = mapped_column(String(128))  # aten overload as FlagGems registers it, "add.Tensor"
    gems_fn: Mapped[str | None] = mapped_column(String(128))  # FlagGems function: the name enable(unused=) takes
    inputs: Mapped[str] = mapped_column(Text)  # "bfloat16[512, 3584], bfloat16[3584, 4608]"
    status: Mapped[str] = mapped_column(String(16))  # "pass" | "mismatch" | "crash" | "skipped"
    max_abs_error: Mapped[float | None] = mapped_column(Float)
    rel_error: Mapped[float | None] = mapped_column(Float)
    detail: Mapped[str | None] = mapped_column(Text)
    candidate: Mapped[str] = mapped_column(String(128))  # what was checked against native, e.g. "flag_gems"
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    environment: Mapped[Environment] = relationship()


class BenchRun(Base):
    """One (mode, concurrency) row of a `tuner bench`: the same engine, model and requests served
    natively, with FlagGems untuned, or with FlagGems + tuner's routes."""

    __tablename__ = "tuner_bench_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    environment_id: Mapped[int] = mapped_column(ForeignKey("tuner_environments.id"), index=True)
    bench_id: Mapped[str] = mapped_column(String(64), index=True)  # one `tuner bench` invocation
    engine: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(Text)
    mode: Mapped[str] = mapped_column(String(16))  # native | untuned | tuned
    concurrency: Mapped[int] = mapped_column(Integer)
    output_tok_s: Mapped[float | None] = mapped_column(Float)  # warm
    output_tok_s_cold: Mapped[float | None] = mapped_column(Float)
    start_s: Mapped[float | None] = mapped_column(Float)
    autotunes: Mapped[int | None] = mapped_column(Integer)
    jit_compiles: Mapped[int | None] = mapped_column(Integer)
    metrics: Mapped[dict] = mapped_column(JSON)  # TTFT/TPOT percentiles, agreement, ratio to native
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    environment: Mapped[Environment] = relationship()
