"""`tuner profile` and `tuner check`: validate, profile natively and under FlagGems, check, store.

Order of `profile`: every user mistake is found before a model is built or a row written; then
the model is built once, profiled natively, the consistency check runs (unless told not to),
and FlagGems is enabled minus every op a stored check found failing for a second profile of the
same steps. Each mode is stored as a ProfileRun with its ranked HotOps, and each hot mm row a
stored tuned config covers carries the gain that config predicts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Callable

import torch

from tuner.devices import DTYPE_ALIASES, resolve_device, torch_dtype
from tuner.errors import UserError


@dataclass
class WorkloadRequest:
    """What `tuner profile` and `tuner check` both build, run and check, and where they store."""

    workloads: list[str] = field(default_factory=lambda: ["all"])
    scale: float = 1.0
    weights: str | None = None
    device: str = "auto"
    dtype: str | None = None  # default bf16 on a GPU, fp32 on CPU
    prompt_tokens: int | None = None
    decode_batches: list[int] | None = None
    decode_steps: int | None = None
    e2e_steps: int = 8
    candidate: str | None = None  # consistency-check candidate "module:function" (default FlagGems)
    db_url: str | None = None


@dataclass
class ProfileRequest(WorkloadRequest):
    top: int = 15
    trace: str | None = None  # default: ./tuner-trace.json
    check: bool = True
    flaggems: bool = True
    overhead: bool = False
    check_timeout_s: float = 300.0
    check_jobs: int | None = None


@dataclass
class ModeResult:
    run_id: int
    flaggems: bool
    time_source: str
    trace_path: str
    total_us: float
    rows: list[dict]  # top N, with predicted_gain_us
    row_count: int
    overhead: dict | None = None
    exclude: list[str] = field(default_factory=list)


@dataclass
class ProfileOutcome:
    label: str  # "MiniCPM-o 2.6 at scale 0.05 (shapes NOT the real model's), fp32, cpu; CPU op self time ..."
    model: dict
    options: dict
    modes: list[ModeResult]
    notes: list[str]
    check: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# --- validation -------------------------------------------------------------------------------------

def _options(req: ProfileRequest):
    from tuner.profiling.workload import RequestOptions, WorkloadError

    over = {k: v for k, v in (("prompt_tokens", req.prompt_tokens), ("decode_steps", req.decode_steps),
                              ("decode_batches", tuple(req.decode_batches) if req.decode_batches else None))
            if v is not None}
    opts = RequestOptions(**over)
    try:
        opts.validate()
    except WorkloadError as e:
        raise UserError(str(e)) from None
    return opts


def _check_weights_folder(weights: str | None) -> None:
    if weights is None:
        return
    p = Path(weights)
    if not p.is_dir():
        raise UserError(f"weights folder {p} does not exist or is not a directory.")
    if not any(p.glob("*.safetensors")):
        raise UserError(f"no *.safetensors files in weights folder {p}.")


def validate(req: ProfileRequest) -> tuple[list[str], str, torch.dtype, object]:
    """Every mistake a user can make that is visible before building the model."""
    from tuner.profiling.workload import WorkloadError, model_dims, resolve_workloads

    try:
        workloads = resolve_workloads(req.workloads)
        model_dims(req.scale)
    except WorkloadError as e:
        raise UserError(str(e)) from None
    if req.candidate is not None:
        from tuner.profiling.check_worker import candidate_reason

        if (why := candidate_reason(req.candidate)) is not None:
            raise UserError(why)
    device = resolve_device(req.device, interpreter=False)
    dtype_name = req.dtype or ("bf16" if device == "cuda" else "fp32")
    if dtype_name not in DTYPE_ALIASES:
        raise UserError(f"unknown dtype {dtype_name!r}; use bf16, fp16 or fp32")
    if req.top is not None and req.top < 1:
        raise UserError("--top must be a positive number")
    _check_weights_folder(req.weights)
    return workloads, device, torch_dtype(dtype_name), _options(req)


def label(model: dict, time_source: str) -> str:
    scale = model.get("scale", 1.0)
    parts = ["MiniCPM-o 2.6"]
    parts.append("full size" if scale == 1.0 else f"at scale {scale:g} (shapes are NOT the real model's)")
    parts.append(f"{model.get('dtype')}, {model.get('device')}, {model.get('weights', 'random')} weights")
    src = ("GPU kernel time" if time_source == "cuda"
           else "CPU op self time (shows the structure only, not H100 costs)")
    return ", ".join(parts) + f"; time source: {src}"


# --- helpers ------------------------------------------------------------------------------------------

def _open_db(url: str | None):
    from tuner.store import open_db

    return open_db(url)


def _build_steps(req, workloads, device: str, dtype, options):
    """The model (random or --weights), its description, and its request steps."""
    from tuner.profiling.workload import WorkloadError, build_model, build_requests, components_for, describe, load_weights

    model = build_model(req.scale, dtype, device, components=components_for(workloads))
    if req.weights is not None:
        try:
            load_weights(model, req.weights)
        except WorkloadError as e:
            raise UserError(str(e)) from None
    return model, describe(model) | {"weights": req.weights or "random"}, build_requests(model, workloads, options)


def _environment(db, device: str):
    from db import queries
    from tuner import fingerprint as fp

    env = fp.collect(device)
    with db.session() as s:
        row = queries.get_or_create_environment(s, env.digest(), env.as_dict())
        s.commit()
        return row.id, env.digest()


_ROW_FIELDS = ("op", "shapes", "dtype", "kernel", "calls", "total_us", "share", "tunable", "key", "steps")


def _row_dict(r) -> dict:
    if isinstance(r, dict):
        return dict(r)
    if is_dataclass(r):
        return asdict(r)
    return {k: getattr(r, k) for k in _ROW_FIELDS if hasattr(r, k)}  # a stored HotOp row


def with_gains(rows, session, environment_id: int, flaggems: bool) -> list[dict]:
    """HotOp rows as dicts, `predicted_gain_us` set on the aten::<op> rows of the ops whose keys a
    profile row gives (Coverage.profile_keys: aten::mm, aten::addmm) that a stored best config of
    that op covers (bmm rows do not say their operand layout: no prediction)."""
    from db import profile_queries as pq
    from tuner.profiling.hot_keys import profile_key_ops

    predicts = profile_key_ops()
    cache: dict[tuple[str, str], dict] = {}
    out = []
    for r in rows:
        d = _row_dict(r)
        d["predicted_gain_us"] = None
        key = d.get("key") or {}
        kernel = d.get("tunable")
        if d["op"] == f"aten::{kernel}" and kernel in predicts and key.get("batch", 1) == 1:
            best_by = cache.setdefault((kernel, d["dtype"]),
                                       pq.mm_best_by_mnk(session, environment_id, d["dtype"], kernel))
            best = best_by.get((key.get("M"), key.get("N"), key.get("K")))
            if best is not None:
                d["predicted_gain_us"] = pq.predicted_gain_us(d["calls"], best, flaggems)
        out.append(d)
    return out


def _store(db, env_id: int, result, workloads, flaggems: bool, overhead_ratio, extra_options: dict) -> tuple[int, list[dict]]:
    from db import Environment
    from db import profile_queries as pq

    with db.session() as s:
        env = s.get(Environment, env_id)
        rows = with_gains(result.rows, s, env_id, flaggems)
        run = pq.add_profile_run(
            s, env, rows, workloads=",".join(workloads), scale=float(result.model["scale"]),
            dtype=result.model["dtype"], device=result.model["device"], time_source=result.time_source,
            flaggems=flaggems, options=result.options | extra_options, model=result.model,
            trace_path=str(result.trace_path), total_us=result.total_us, overhead_ratio=overhead_ratio,
        )
        s.commit()
        return run.id, rows


def _trace_path(req: ProfileRequest, flaggems: bool) -> Path:
    base = Path(req.trace) if req.trace else Path.cwd() / "tuner-trace.json"
    if not flaggems:
        return base
    name = base.name
    for suffix in (".json.gz", ".json"):
        if name.endswith(suffix):
            return base.with_name(name[: -len(suffix)] + ".flaggems" + suffix)
    return base.with_name(name + ".flaggems.json")


def _flaggems_module():
    try:
        import flag_gems

        return flag_gems, None
    except Exception as e:  # no device, wrong vendor, ...
        return None, f"{type(e).__name__}: {e}".splitlines()[0]


# --- the flows ----------------------------------------------------------------------------------------

def profile(req: ProfileRequest, on_stage: Callable[[str], None] | None = None) -> ProfileOutcome:
    from tuner.profiling import check as chk
    from tuner.profiling.profiler import measure_overhead, profile_steps

    stage = on_stage or (lambda _msg: None)
    workloads, device, dtype, options = validate(req)
    db = _open_db(req.db_url)  # a foreign or unreadable --db is refused before any work
    try:
        stage("building the model")
        model, desc, steps = _build_steps(req, workloads, device, dtype, options)
        source = "cuda" if device == "cuda" else "cpu"
        notes: list[str] = []
        if req.scale != 1.0:
            notes.append(f"scale {req.scale:g}: every shape is shrunk; rows are NOT the real model's shapes.")
        if source == "cpu":
            notes.append("time source is CPU op self time: it shows which ops run, not what they cost on a GPU.")

        stage("profiling natively")
        native = profile_steps(steps, _trace_path(req, False), time_source=source)
        native.model, native.options = desc, asdict(options)
        overhead = None
        if req.overhead:
            stage("measuring the profiler's overhead")
            o = measure_overhead(steps, repeats=1, time_source=source)
            overhead = {"plain_s": o.plain_s, "profiled_s": o.profiled_s, "analysis_s": o.analysis_s, "ratio": o.ratio}
        env_id, digest = _environment(db, device)
        native_id, native_rows = _store(db, env_id, native, workloads, False,
                                        overhead["ratio"] if overhead else None, {"overhead": overhead})
        modes = [ModeResult(native_id, False, source, str(native.trace_path), native.total_us,
                            native_rows[: req.top], len(native_rows), overhead)]

        check_report = None
        candidate = req.candidate or chk.FLAGGEMS_CANDIDATE
        gems_ok = None if source == "cuda" else "FlagGems kernels need a GPU"
        if gems_ok is None and req.candidate is None and (req.check or req.flaggems):
            gems_ok = chk.flaggems_importable()
        if req.check:
            if gems_ok is not None and req.candidate is None:
                notes.append(f"consistency check skipped: {gems_ok}.")
            else:
                stage("consistency check (one subprocess per op)")
                check_report = _run_check(db, env_id, native_id, steps, candidate, device, req)
                if "text" in workloads and req.e2e_steps > 0 and device == "cuda" and req.candidate is None:
                    stage("end-to-end logits, FlagGems minus the exclude list vs native")
                    check_report.e2e = chk.e2e_logits(model.llm, _exclude(db, env_id), steps=req.e2e_steps)

        if req.flaggems:
            flag_gems, why = (None, gems_ok) if gems_ok is not None else _flaggems_module()
            if flag_gems is None:
                notes.append(f"FlagGems profile skipped: {why}.")
            else:
                exclude = _exclude(db, env_id)
                stage(f"profiling with FlagGems (excluded: {', '.join(exclude) or 'none'})")
                # as under `tuner serve`, FlagGems' configs are read from memory: otherwise every
                # LibTuner call costs two SQL sessions (~0.6 ms), thousands per TTS decode
                from tuner.inject.flaggems_memo import install_config_memo

                undo_memo = install_config_memo()
                try:
                    with flag_gems.use_gems(exclude=exclude):
                        gems = profile_steps(steps, _trace_path(req, True), time_source=source)
                except Exception as e:
                    notes.append(f"FlagGems profile failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
                else:
                    gems.model, gems.options = desc, asdict(options)
                    gid, grows = _store(db, env_id, gems, workloads, True, None, {"exclude": exclude})
                    modes.append(ModeResult(gid, True, source, str(gems.trace_path), gems.total_us,
                                            grows[: req.top], len(grows), None, exclude))
                finally:
                    undo_memo()
        return ProfileOutcome(label(desc, source), desc, asdict(options), modes, notes,
                              check_report.to_dict() if check_report else None)
    finally:
        db.dispose()


def _candidate_name(candidate: str | None) -> str:
    from tuner.profiling import check as chk

    return "flag_gems" if candidate in (None, chk.FLAGGEMS_CANDIDATE) else candidate


def _exclude(db, env_id: int, candidate: str | None = None) -> list[str]:
    from db import profile_queries as pq

    with db.session() as s:
        return pq.exclude_list(s, env_id, candidate=_candidate_name(candidate))


def _run_check(db, env_id: int, profile_run_id: int | None, steps, candidate: str, device: str, req) -> object:
    from db import Environment
    from db import profile_queries as pq
    from tuner.profiling import check as chk

    jobs = req.check_jobs or (4 if device == "cuda" else 1)
    report = chk.check_steps(steps, candidate=candidate, device=device, timeout_s=req.check_timeout_s, jobs=jobs)
    name = _candidate_name(candidate)
    with db.session() as s:
        pq.add_consistency_results(s, s.get(Environment, env_id), [asdict(r) for r in report.results],
                                   profile_run_id=profile_run_id, candidate=name)
        s.commit()
    return report


@dataclass
class CheckRequest(WorkloadRequest):
    timeout_s: float = 300.0  # a profile's check_timeout_s
    jobs: int | None = None  # a profile's check_jobs

    def as_profile(self) -> ProfileRequest:
        """The same workload as a profile request, for what the two flows share (validate, _run_check)."""
        return ProfileRequest(**{f.name: getattr(self, f.name) for f in fields(WorkloadRequest)},
                              check_timeout_s=self.timeout_s, check_jobs=self.jobs)


def check(req: CheckRequest, on_stage: Callable[[str], None] | None = None) -> dict:
    """`tuner check`: capture the workload's FlagGems-op inputs, check each op, store, end to end."""
    from tuner.profiling import check as chk

    stage = on_stage or (lambda _msg: None)
    preq = req.as_profile()
    workloads, device, dtype, options = validate(preq)
    if req.candidate is None:
        why = "FlagGems kernels need an NVIDIA GPU, and none is visible" if device != "cuda" else chk.flaggems_importable()
        if why is not None:
            raise UserError(f"the consistency check cannot run here: {why}.")
    if req.timeout_s <= 0:
        raise UserError("--timeout must be a positive number of seconds")
    db = _open_db(req.db_url)
    try:
        stage("building the model")
        model, desc, steps = _build_steps(req, workloads, device, dtype, options)
        env_id, _ = _environment(db, device)
        stage("consistency check (one subprocess per op)")
        report = _run_check(db, env_id, None, steps, req.candidate or chk.FLAGGEMS_CANDIDATE, device, preq)
        if "text" in workloads and req.e2e_steps > 0:
            if device == "cuda" and req.candidate is None:
                stage("end-to-end logits, FlagGems minus the exclude list vs native")
                report.e2e = chk.e2e_logits(model.llm, _exclude(db, env_id), steps=req.e2e_steps)
            else:
                report.e2e = {"status": "skipped: needs a GPU" if device != "cuda" else
                              "skipped: end to end runs FlagGems only"}
        out = report.to_dict()
        out["label"] = label(desc, "cuda" if device == "cuda" else "cpu")
        out["stored_exclude_list"] = _exclude(db, env_id, req.candidate)
        return out
    finally:
        db.dispose()
