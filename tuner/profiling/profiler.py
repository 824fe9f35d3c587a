"""Profile workload steps with torch.profiler and rank (op, shapes, dtype, kernel) by time.

Time source: on a CUDA machine each GPU kernel's duration is charged to the aten op that
launched it (the profiler links kernel and op by correlation id: `FunctionEvent.kernels`).
Without CUDA, each aten op's CPU self time is used instead and rows say `time_source="cpu"`;
those numbers only show the workload's structure, not H100 costs.

`aggregate`, `rank`, `tunable_kernel`, `mm_key` and `attention_key` are pure functions of plain
data (rows, and what each tunable op declares it covers: kernels.base.Coverage) so they can be
tested from fixed samples; `samples_from_events` is the only code that reads profiler objects.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

Shapes = tuple[tuple[int, ...], ...]

# Operand forms a tunable op declares for the aten ops it covers (Coverage.aten_ops): how a row's
# shapes give its key. GEMM forms give {M, N, K, batch, bias} (and the row's m, n, k), attention
# forms (q, k as (B, H, L, D) / (B, L, H, D)) give {batch, heads, kv_heads, q_len, kv_len, head_dim}.
GEMM_FORMS = ("mm", "addmm", "linear", "matmul", "bmm", "baddbmm")
ATTENTION_FORMS = ("bhld", "blhd")
ROW_FORMS = GEMM_FORMS + ATTENTION_FORMS

_DTYPES = {"float": "float32", "double": "float64", "c10::Half": "float16", "c10::BFloat16": "bfloat16",
           "long int": "int64", "int": "int32", "bool": "bool", "c10::Float8_e4m3fn": "float8_e4m3fn",
           "c10::Float8_e5m2": "float8_e5m2", "signed char": "int8", "unsigned char": "uint8"}
UNATTRIBUTED = "(unattributed)"


@dataclass(frozen=True)
class KernelSample:
    """Time one op invocation spent in one kernel (or, on CPU, in its own code)."""

    op: str
    shapes: Shapes
    dtype: str
    kernel: str
    us: float
    call: int  # identifies the op invocation, so calls are counted once per launch site
    step: str = ""


@dataclass
class HotOp:
    op: str
    shapes: str
    dtype: str
    kernel: str
    calls: int
    total_us: float
    share: float  # of all profiled time (all rows, before any top-N cut)
    tunable: str  # the tunable op covering `op` (kernels.REGISTRY: mm, addmm, ...) | "not tunable"
    m: int | None = None
    n: int | None = None
    k: int | None = None
    key: dict | None = None  # full problem key for the tunable kernel (mm: M,N,K,batch,bias)
    steps: tuple[str, ...] = ()  # workload steps this time came from


@dataclass
class ProfileResult:
    rows: list[HotOp]  # all rows, ranked
    time_source: str  # "cuda" | "cpu"
    trace_path: str
    total_us: float
    step_wall_us: dict[str, float] = field(default_factory=dict)  # profiled wall time per step
    model: dict = field(default_factory=dict)  # workload.describe(): scale, dtype, dims, ...
    options: dict = field(default_factory=dict)  # the RequestOptions used

    def to_dict(self) -> dict:
        """JSON-ready form (for --json output and the DB layer)."""
        return asdict(self)


@dataclass
class Overhead:
    plain_s: float
    profiled_s: float
    analysis_s: float  # turning the recorded trace into events, after the steps ran

    @property
    def ratio(self) -> float:
        return self.profiled_s / self.plain_s if self.plain_s > 0 else math.inf


# --- pure functions ------------------------------------------------------------------------

@functools.cache
def _coverage_index() -> tuple[dict[str, tuple[str, str]], tuple[tuple[str, tuple[str, ...]], ...]]:
    """aten op -> (tunable op, operand form), and each op's name patterns, in REGISTRY order."""
    from kernels import coverages

    exact: dict[str, tuple[str, str]] = {}
    patterns = []
    for name, cov in coverages().items():
        for aten, form in cov.aten_ops.items():
            if aten in exact:
                raise ValueError(f"{aten} is declared by both {exact[aten][0]} and {name}")
            if form not in ROW_FORMS:
                raise ValueError(f"{name} declares {aten} with the unknown operand form {form!r}")
            exact[aten] = (name, form)
        if cov.op_patterns:
            patterns.append((name, cov.op_patterns))
    return exact, tuple(patterns)


def tunable_kernel(op: str) -> str:
    """Which tuner kernel covers `op`: the one declaring it among its aten ops, else the first
    whose name patterns it contains."""
    exact, patterns = _coverage_index()
    if op in exact:
        return exact[op][0]
    low = op.lower()
    for name, parts in patterns:
        if any(p in low for p in parts):
            return name
    return "not tunable"


def row_form(op: str) -> str | None:
    """The operand form a tunable op declares for `op` (ROW_FORMS), None for an undeclared op."""
    hit = _coverage_index()[0].get(op)
    return hit[1] if hit else None


def _prod(dims: Iterable[int]) -> int:
    return math.prod(dims) if dims else 1


def mm_key(op: str, shapes: Shapes) -> dict | None:
    """GEMM problem {M, N, K, batch, bias} from a GEMM-form op's input shapes, or None."""
    form = row_form(op)
    try:
        if form == "mm":
            (m, k), (_, n) = shapes[0], shapes[1]
            return {"M": m, "N": n, "K": k, "batch": 1, "bias": False}
        if form == "addmm":  # (bias, mat1, mat2, beta, alpha)
            (m, k), (_, n) = shapes[1], shapes[2]
            return {"M": m, "N": n, "K": k, "batch": 1, "bias": len(shapes[0]) > 0}
        if form == "linear":  # (input[..., K], weight[N, K], bias[N] or none)
            x, w = shapes[0], shapes[1]
            bias = len(shapes) > 2 and len(shapes[2]) > 0
            return {"M": _prod(x[:-1]), "N": w[0], "K": w[1], "batch": 1, "bias": bias}
        if form == "bmm":
            (b, m, k), (_, _, n) = shapes[0], shapes[1]
            return {"M": m, "N": n, "K": k, "batch": b, "bias": False}
        if form == "baddbmm":  # (self, batch1, batch2, beta, alpha)
            (b, m, k), (_, _, n) = shapes[1], shapes[2]
            return {"M": m, "N": n, "K": k, "batch": b, "bias": True}
        if form == "matmul":
            a, b = shapes[0], shapes[1]
            if len(b) <= 2:  # weight-like right operand: leading dims of a fold into M
                n = b[-1] if len(b) == 2 else 1
                return {"M": _prod(a[:-1]), "N": n, "K": a[-1], "batch": 1, "bias": False}
            lead = torch.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
            m = a[-2] if len(a) >= 2 else 1
            return {"M": m, "N": b[-1], "K": b[-2], "batch": _prod(lead), "bias": False}
    except (IndexError, ValueError, TypeError, RuntimeError):
        return None  # shapes not recorded or not the expected form
    return None


def attention_key(op: str, shapes: Shapes) -> dict | None:
    """{batch, heads, kv_heads, q_len, kv_len, head_dim} from an attention-form op's q/k shapes."""
    form = row_form(op)
    try:
        q, k = shapes[0], shapes[1]
        if form == "bhld":
            (b, h, lq, d), (_, hk, lk, _) = q, k
        elif form == "blhd":
            (b, lq, h, d), (_, lk, hk, _) = q, k
        else:
            return None
    except (IndexError, ValueError, TypeError):
        return None
    return {"batch": b, "heads": h, "kv_heads": hk, "q_len": lq, "kv_len": lk, "head_dim": d}


def row_key(op: str, shapes: Shapes) -> dict | None:
    """The key a profile row of `op` gives its tunable op (by the declared operand form), or None."""
    return mm_key(op, shapes) if row_form(op) in GEMM_FORMS else attention_key(op, shapes)


def aggregate(samples: Iterable[KernelSample]) -> list[HotOp]:
    """Sum samples per (op, shapes, dtype, kernel) into ranked rows with time shares."""
    groups: dict[tuple, list[KernelSample]] = {}
    for s in samples:
        groups.setdefault((s.op, s.shapes, s.dtype, s.kernel), []).append(s)
    grand = sum(s.us for g in groups.values() for s in g)
    rows = []
    for (op, shapes, dtype, kernel), group in groups.items():
        total = sum(s.us for s in group)
        tunable = tunable_kernel(op)
        key = row_key(op, shapes)
        mm = key if key and row_form(op) in GEMM_FORMS else {}
        rows.append(HotOp(
            op=op, shapes=json.dumps([list(s) for s in shapes]), dtype=dtype, kernel=kernel,
            calls=len({s.call for s in group}), total_us=total,
            share=total / grand if grand > 0 else 0.0, tunable=tunable,
            m=mm.get("M"), n=mm.get("N"), k=mm.get("K"), key=key,
            steps=tuple(dict.fromkeys(s.step for s in group if s.step)),
        ))
    return rank(rows)


def rank(rows: Sequence[HotOp], top: int | None = None) -> list[HotOp]:
    """Rows by descending time (ties in a fixed order), the first `top` of them if given."""
    if top is not None and top < 0:
        raise ValueError(f"top must be >= 0, got {top}")
    ordered = sorted(rows, key=lambda r: (-r.total_us, r.op, r.shapes, r.dtype, r.kernel))
    return ordered if top is None else ordered[:top]


# --- reading torch.profiler events -----------------------------------------------------------

def _dtype(input_dtypes: Sequence[str] | None) -> str:
    """The first floating dtype among the inputs; "-" when unknown (FunctionEvent only carries
    input dtypes from torch 2.13 on: on older torch every row reads "-")."""
    for name in input_dtypes or ():
        if name in _DTYPES:
            return _DTYPES[name]
    return "-"


def _is_op(e) -> bool:
    return "::" in e.name and not e.is_user_annotation and not getattr(e, "is_python_function", False)


def _owner(e):
    """Nearest op at or above `e` (a kernel may be launched under a record_function only)."""
    node = e
    while node is not None and not _is_op(node):
        node = node.cpu_parent
    return node


def _step_of(e, step_names: set[str]) -> str:
    node = e
    while node is not None:
        if node.name in step_names:
            return node.name
        node = node.cpu_parent
    return ""


def _shapes(e) -> Shapes:
    return tuple(tuple(int(d) for d in s) if isinstance(s, (list, tuple)) else () for s in (e.input_shapes or ()))


def samples_from_events(events, time_source: str, step_names: Iterable[str] = ()) -> list[KernelSample]:
    """KernelSamples from `prof.events()`: kernel time per launching op ("cuda") or op self time ("cpu")."""
    if time_source not in ("cuda", "cpu"):
        raise ValueError(f"time_source must be 'cuda' or 'cpu', got {time_source!r}")
    names = set(step_names)
    samples: list[KernelSample] = []
    if time_source == "cpu":
        for e in events:
            if e.device_type == DeviceType.CPU and not e.is_async and _is_op(e) and e.self_cpu_time_total > 0:
                samples.append(KernelSample(e.name, _shapes(e), _dtype(getattr(e, "input_dtypes", None)), "cpu",
                                            float(e.self_cpu_time_total), id(e), _step_of(e, names)))
        return samples

    # Device events: kernels, memcpy/memset, and (torch >= 2.4 with kineto) GPU-side copies of
    # every record_function range ("gpu_user_annotation"), which span whole steps and must not be
    # summed as kernel time. They are recognised by flag, by activity type, or by sharing the name
    # of a CPU-side annotation.
    annotation_names = {e.name for e in events if e.device_type == DeviceType.CPU and e.is_user_annotation}
    device_by_name: dict[str, float] = {}
    for e in events:
        if e.device_type == DeviceType.CUDA:
            if _is_annotation_on_device(e, annotation_names):
                continue
            device_by_name[e.name] = device_by_name.get(e.name, 0.0) + e.time_range.elapsed_us()
            continue
        if e.is_async or not e.kernels:
            continue
        owner = _owner(e) or e
        for kern in e.kernels:
            samples.append(KernelSample(owner.name, _shapes(owner), _dtype(getattr(owner, "input_dtypes", None)), kern.name,
                                        float(kern.duration), id(owner), _step_of(e, names)))
    # GPU time whose launch the profiler could not link to an op still counts in the shares, one
    # row per kernel name so the table says what ran unlinked
    linked: dict[str, float] = {}
    for s in samples:
        linked[s.kernel] = linked.get(s.kernel, 0.0) + s.us
    device_total = sum(device_by_name.values())
    for name, us in sorted(device_by_name.items()):
        missing = us - linked.get(name, 0.0)
        if missing > 1e-6 * max(device_total, 1.0):
            samples.append(KernelSample(UNATTRIBUTED, (), "-", name, missing, -1))
    return samples


def _is_annotation_on_device(e, annotation_names: set[str]) -> bool:
    if e.is_user_annotation or e.name in annotation_names:
        return True
    kind = getattr(e, "activity_type", None)  # absent from older FunctionEvents
    return kind is not None and "annotation" in str(kind).lower()


# --- running ------------------------------------------------------------------------------

def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _activities(time_source: str) -> list[ProfilerActivity]:
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if time_source == "cuda" else [])


def _default_source() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _run_all(steps, wall: dict[str, float] | None = None, annotate: bool = False) -> None:
    for step in steps:
        start = time.perf_counter()
        if annotate:
            with record_function(step.name):
                step.run()
        else:
            step.run()
        _sync()
        if wall is not None:
            wall[step.name] = wall.get(step.name, 0.0) + (time.perf_counter() - start) * 1e6


def _export_trace(prof, path: Path) -> None:
    # write beside the target, then rename: a failed export leaves no half-written trace
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".json.gz" if path.name.endswith(".gz") else ".json"  # torch gzips on a .gz name
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".trace-", suffix=suffix)
    os.close(fd)
    try:
        prof.export_chrome_trace(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def profile_steps(steps: Sequence, trace_path: str | Path, warmup: int = 1,
                  time_source: str | None = None) -> ProfileResult:
    """Run `steps` (objects with .name and .run()) `warmup` times, then once under the profiler.

    Warm-up absorbs one-time costs (cuBLAS handles, Triton compilation/autotuning, allocator
    growth) that a long-running server does not pay per request.
    """
    if not steps:
        raise ValueError("no steps to profile")
    source = time_source or _default_source()
    if source == "cuda" and not torch.cuda.is_available():
        raise ValueError("time_source 'cuda' needs a CUDA device, and none is available")
    for _ in range(warmup):
        _run_all(steps)
    wall: dict[str, float] = {}
    with profile(activities=_activities(source), record_shapes=True) as prof:
        _run_all(steps, wall, annotate=True)
    _export_trace(prof, Path(trace_path))
    samples = samples_from_events(prof.events(), source, [s.name for s in steps])
    return ProfileResult(rows=aggregate(samples), time_source=source, trace_path=str(trace_path),
                         total_us=sum(s.us for s in samples), step_wall_us=wall)


def measure_overhead(steps: Sequence, repeats: int = 3, warmup: int = 1,
                     time_source: str | None = None) -> Overhead:
    """Best-of-`repeats` wall time of all steps without and with the profiler recording shapes."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    source = time_source or _default_source()
    for _ in range(warmup):
        _run_all(steps)
    plain, profiled, analysis = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        _run_all(steps)
        plain.append(time.perf_counter() - start)
        with profile(activities=_activities(source), record_shapes=True) as prof:
            start = time.perf_counter()
            _run_all(steps, annotate=True)
            done = time.perf_counter()
            profiled.append(done - start)
        prof.events()  # stopping the profiler and building events is part of its cost
        analysis.append(time.perf_counter() - done)
    return Overhead(plain_s=min(plain), profiled_s=min(profiled), analysis_s=min(analysis))


def run_profile(trace_path: str | Path, workloads: str | Sequence[str] = "all", *, scale: float = 1.0,
                dtype: torch.dtype = torch.bfloat16, device: str | None = None,
                weights: str | Path | None = None, options=None, warmup: int = 1) -> ProfileResult:
    """The `tuner profile` flow: build only the components the workloads need, load weights if
    given, profile the requests. User mistakes raise WorkloadError before any model is built."""
    from tuner.profiling.workload import RequestOptions, build_model, build_requests, components_for, describe, load_weights

    components = components_for(workloads)
    options = options or RequestOptions()
    options.validate()
    model = build_model(scale, dtype, device, components=components)
    if weights is not None:
        load_weights(model, weights)
    result = profile_steps(build_requests(model, workloads, options), trace_path, warmup=warmup)
    result.model = describe(model) | {"weights": str(weights) if weights is not None else "random"}
    result.options = asdict(options)
    return result
