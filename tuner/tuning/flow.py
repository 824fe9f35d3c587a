"""`tuner tune`: tune a kernel over a list of keys and store the winners."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Callable

import optuna

from db import open_database
from db import queries
from kernels import get_kernel, kernel_ref
from kernels.base import Kernel, KernelInputError, Key
from tuner import fingerprint as fp
from tuner.devices import resolve_device
from tuner.tuning.compile_pool import CompilePool
from tuner.errors import UserError
from tuner.store import optuna_storage
from db.models import utcnow
from tuner.tuning.claims import StudyClaims, on_stale, owner
from tuner.tuning.heartbeat import GRACE_S, Heartbeat
from tuner.tuning.history import Best
from tuner.tuning.measurer import Setup
from tuner.tuning.search import SAMPLERS, Budget, Event, Outcome, run_search, study_name_for
from tuner.tuning.worker import WorkerClient


@dataclass
class TuneRequest:
    op: str
    shapes: list[str] = field(default_factory=list)
    preset: str | None = None
    dtype: str | None = None
    trials: int | None = 50
    timeout_s: float | None = None
    patience: int | None = None
    sampler: str = "tpe"
    device: str = "auto"
    compile_workers: int | None = None
    seed: int | None = None
    db_url: str | None = None


@dataclass
class KeyResult:
    key: Key
    outcome: Outcome
    stored: bool


def resolve_keys(kernel: Kernel, shapes: list[str], preset: str | None) -> list[Key]:
    keys: list[Key] = []
    if preset:
        presets = kernel.presets()
        if preset not in presets:
            names = ", ".join(presets) or "none"
            raise UserError(f"unknown shape preset {preset!r} for op {kernel.name}; presets: {names}")
        keys.extend(presets[preset])
    for text in shapes:
        try:
            keys.append(kernel.parse_key(text))
        except KernelInputError as e:
            raise UserError(str(e)) from None
    if not keys:
        raise UserError(f"give at least one --shape ({','.join(kernel.key_names)}) or --shapes PRESET")
    return list(dict.fromkeys(keys))


def validate(req: TuneRequest) -> tuple[Kernel, list[Key], str, str]:
    """Every user error is found here, before anything is written."""
    try:
        kernel = get_kernel(req.op)
    except KernelInputError as e:
        raise UserError(str(e)) from None
    if req.sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {req.sampler!r}; use one of {', '.join(SAMPLERS)}")
    if req.trials is not None and req.trials <= 0:
        raise UserError("--trials must be a positive number")
    if req.timeout_s is not None and req.timeout_s <= 0:
        raise UserError("--timeout must be a positive number of seconds")
    if req.patience is not None and req.patience <= 0:
        raise UserError("--patience must be a positive number of trials")
    if req.compile_workers is not None and req.compile_workers < 0:
        raise UserError("--compile-workers must be 0 (off) or a positive number")
    keys = resolve_keys(kernel, req.shapes, req.preset)
    device = resolve_device(req.device)
    if device not in kernel.devices:
        raise UserError(f"op {kernel.name} has no CPU implementation: it needs an NVIDIA GPU (--device cuda)")
    dtype = req.dtype or kernel.default_dtype(device)
    if dtype not in kernel.dtypes:
        raise UserError(f"unknown dtype {dtype!r} for op {kernel.name}; use one of {', '.join(kernel.dtypes)}")
    if device == "cpu" and dtype == "bf16":
        raise UserError("the Triton interpreter (CPU) computes bf16 wrongly; use --dtype fp16 or fp32 on CPU")
    check_fits(kernel, keys, device, dtype)
    return kernel, keys, device, dtype


def check_fits(kernel: Kernel, keys: list[Key], device: str, dtype: str) -> None:
    """A key whose one input set needs more than half the device's memory cannot be measured (the
    reference output and the cache-defeating extra sets come on top): refused before anything is
    written, not a traceback and a 'failed' run row."""
    from tuner.fingerprint import memory_bytes

    total = memory_bytes(device)
    if not total:
        return
    for key in keys:
        need = kernel.bytes_per_set(key, dtype)
        if need > total // 2:
            where = "GPU" if device == "cuda" else "machine"
            raise UserError(f"key {','.join(map(str, key))} needs {need / 2**30:,.1f} GiB for one set of inputs "
                            f"({dtype}); this {where} has {total / 2**30:,.1f} GiB")


def _arch(device: str) -> int:
    if device != "cuda":
        return 9
    try:
        import pynvml

        pynvml.nvmlInit()
        major, _ = pynvml.nvmlDeviceGetCudaComputeCapability(pynvml.nvmlDeviceGetHandleByIndex(0))
        pynvml.nvmlShutdown()
        return int(major)
    except Exception:
        return 9


def neighbour_winners(session, kernel: Kernel, key: Key, dtype: str, environment_id: int) -> list[dict]:
    """Stored winners of keys that differ only in M (the first key field), nearest M first."""
    rows = [r for r in queries.best_configs(session, kernel=kernel.name)
            if r.environment_id == environment_id and r.dtype == dtype]
    out = []
    for r in rows:
        other = tuple(r.key_values[n] for n in kernel.key_names)
        if other != key and other[1:] == key[1:]:
            out.append((abs(other[0] - key[0]), r.config))
    return [cfg for _, cfg in sorted(out, key=lambda x: x[0])][:3]


def tune(req: TuneRequest, on_key: Callable[[Key, int, int], None] | None = None,
         on_event: Callable[[Event], None] | None = None) -> list[KeyResult]:
    kernel, keys, device, dtype = validate(req)
    db = open_database(req.db_url)
    storage = optuna_storage(db.url, on_stale=on_stale(db.sessions))
    env = fp.collect(device)
    arch = _arch(device)
    workers = req.compile_workers
    if workers is None:
        workers = min(8, max(1, (os.cpu_count() or 2) - 2)) if device == "cuda" else 0
    results: list[KeyResult] = []

    def start(s) -> tuple[int, int]:
        queries.mark_stale_runs(s, GRACE_S)  # runs of killed processes no longer show 'running'
        env_row = queries.get_or_create_environment(s, env.digest(), env.as_dict())
        run = queries.start_run(s, env_row, kernel=kernel.name, sampler=req.sampler, device=device,
                                trials_budget=req.trials, timeout_s=req.timeout_s, compile_workers=workers,
                                owner=owner(), heartbeat_at=utcnow())
        return run.id, env_row.id

    run_id, env_id = queries.in_transaction(db.session, start)  # again if another process added the environment
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pool = CompilePool(kernel_ref(kernel), device, workers)
    worker = WorkerClient(kernel_ref(kernel), device)
    status, reason = "done", None
    heartbeat = Heartbeat(storage, beat_run=lambda: _beat(db, run_id))
    try:
        heartbeat.__enter__()
        for i, key in enumerate(keys):
            if on_key:
                on_key(key, i, len(keys))
            with db.session() as s:
                warm = neighbour_winners(s, kernel, key, dtype, env_id)
            warm += kernel.starting_configs(key, dtype, device)
            name = study_name_for(kernel, key, dtype, env.digest())
            store = functools.partial(_store, db, kernel, key, dtype, env_id=env_id, run_id=run_id, study_name=name)

            def on_best(best: Best, setup, trials_used: int) -> None:
                store(best, setup.baselines_us, trials_used, setup.timing, confirmed=False)

            outcome = run_search(
                kernel=kernel, key=key, dtype=dtype, device=device, storage=storage, study_name=name,
                measurer=worker, sampler=req.sampler, budget=Budget(req.trials, req.timeout_s, req.patience),
                compile_pool=pool, warm_start=warm, seed=req.seed, arch=arch, on_event=on_event,
                claims=StudyClaims(db.session, name), heartbeat=heartbeat, on_best=on_best,
            )
            stored = False  # True when this run's best is the stored one (a faster stored row stays)
            if outcome.best_config is not None:
                o = outcome
                best = Best(o.best_us, o.best_config, o.best_rel_error, o.best_max_abs_error)
                stored = store(best, o.setup.baselines_us, o.trials_total, o.timing or o.setup.timing,
                               confirmed=o.confirmed)
            results.append(KeyResult(key, outcome, stored))
    except KeyboardInterrupt:
        status, reason = "interrupted", "interrupted by the user"
        raise
    except Exception as e:
        status, reason = "failed", f"{type(e).__name__}: {e}"
        raise
    finally:
        heartbeat.__exit__()
        worker.close()
        pool.close()
        with db.session() as s:
            run = s.get(queries.TuningRun, run_id)
            queries.finish_run(s, run, status, reason)
            s.commit()
        db.dispose()
    return results


def result_as_dict(r: KeyResult) -> dict:
    """A key's result as `tuner tune --json` prints it (and a --workers child hands it over)."""
    o = r.outcome
    return {"key": list(r.key), "best_config": o.best_config, "best_us": o.best_us, "stored": r.stored,
            "baselines_us": o.setup.baselines_us, "baseline_errors": o.setup.baseline_errors,
            "first_call_s": o.setup.first_call_s, "measured": o.measured, "trials_total": o.trials_total,
            "counts": o.counts, "stop_reason": o.stop_reason, "timing": o.timing, "wall_s": o.wall_s,
            "setup_s": o.setup_s, "study": o.study_name, "confirmed": o.confirmed,
            "search_best_us": o.search_best_us, "setup_baselines_us": o.setup_baselines_us,
            "best_rel_error": o.best_rel_error, "best_max_abs_error": o.best_max_abs_error}


def result_from_dict(d: dict) -> KeyResult:
    """result_as_dict's inverse."""
    setup = Setup(baselines_us=d["baselines_us"], baseline_errors=d["baseline_errors"],
                  first_call_s=d["first_call_s"], timing=d["timing"])
    o = Outcome(study_name=d["study"], setup=setup, best_config=d["best_config"], best_us=d["best_us"],
                best_rel_error=d.get("best_rel_error"), best_max_abs_error=d.get("best_max_abs_error"),
                measured=d["measured"], trials_total=d["trials_total"], stop_reason=d["stop_reason"],
                counts=d["counts"], timing=d["timing"], wall_s=d["wall_s"], setup_s=d["setup_s"],
                confirmed=d["confirmed"], search_best_us=d["search_best_us"],
                setup_baselines_us=d["setup_baselines_us"])
    return KeyResult(tuple(d["key"]), o, d["stored"])


def _beat(db, run_id: int) -> None:
    with db.session() as s:
        queries.beat_run(s, run_id)
        s.commit()


def _store(db, kernel: Kernel, key: Key, dtype: str, best: Best, baselines_us: dict[str, float], trials_used: int,
           timing: str, *, env_id: int, run_id: int, study_name: str, confirmed: bool) -> bool:
    """A key's best: provisional (confirmed=False, a search timing, stored as the search improves)
    or after the side-by-side pass; queries.store_best keeps whichever the rules prefer and says
    whether it kept this one."""
    native, untuned = baselines_us.get("native"), baselines_us.get("untuned")
    return queries.store_best(
        db.session, environment_id=env_id, kernel=kernel.name, key_values=kernel.key_dict(key), dtype=dtype,
        run_id=run_id, kernel_source_hash=kernel.source_hash(best.config), config=best.config, time_us=best.us,
        untuned_us=untuned, native_us=native, baselines_us=dict(baselines_us),
        speedup_vs_untuned=untuned / best.us if untuned else None,
        speedup_vs_native=native / best.us if native else None,
        max_abs_error=best.max_abs_error or 0.0, rel_error=best.rel_error or 0.0,
        trials_used=trials_used, timing=timing, study_name=study_name, confirmed=confirmed,
        source_now=kernel.source_hash,  # a faster stored row of another variant stays (db.queries._stale)
    )
