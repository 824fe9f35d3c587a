"""Read a torch.profiler Chrome trace written inside an engine's worker (vLLM's own profiler hooks)
and say where the GPU time went: kernels by name and class, the Triton share, GPU idle time, and
the eager host work (ops launched outside CUDA graphs).

Kernel classes:
  triton/inductor   Inductor-generated Triton kernels (`triton_poi_*`, `triton_red_*`, ...);
  triton/flaggems   a Triton kernel whose name is one of FlagGems' JIT functions (the caller passes
                    the names found in the installed flag_gems; see `flaggems_kernel_names`) or one
                    its code generator wrote (`*_jit_function`);
  triton/tuner      tuner's own Triton kernels (every @triton.jit function in the kernels package);
  triton/other      any other Triton kernel (vLLM's own: sampling, slot mapping, MoE ...);
  cublas, attention (FlashAttention / cuDNN SDPA), cutlass, nccl, torch (ATen's CUDA kernels), other.
A Triton kernel's name is a bare identifier; CUDA C++ kernels are demangled signatures
(`void at::native::...`, `void flash::...`) or vendor prefixes (cuBLAS' `nvjet_*`, `sm90_xmma_*`).
"""
from __future__ import annotations

import ast
import functools
import gzip
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VENDOR = (("cublas", re.compile(r"^(nvjet|sm\d+_xmma|ampere_|hopper_|gemm|gemv|Kernel2|dot_kernel|"
                                 r"splitKreduce)|cublas", re.I)),
           ("attention", re.compile(r"flash|fmha|cudnn|FlashAttn", re.I)),
           ("cutlass", re.compile(r"cutlass", re.I)),
           ("nccl", re.compile(r"nccl", re.I)))
# Triton and recent cuBLAS launch through the driver API (cuLaunchKernelEx): its events are "cuda_driver"
LAUNCH_CATS = ("cuda_runtime", "cuda_driver")
FLAGGEMS_GENERATED_SUFFIX = "_jit_function"  # FlagGems' pointwise code generator: _gather_flaggems_jit_function


def classify(name: str, flaggems: frozenset[str] = frozenset(), tuner: frozenset[str] | None = None) -> str:
    tuner = tuner_kernel_names() if tuner is None else tuner
    if _IDENT.match(name):
        if name.startswith("triton_"):
            return "triton/inductor"
        if name in flaggems or name.endswith(FLAGGEMS_GENERATED_SUFFIX):
            return "triton/flaggems"
        if name in tuner:
            return "triton/tuner"
        for cls, pat in _VENDOR:
            if pat.search(name):
                return cls
        return "triton/other"
    for cls, pat in _VENDOR:
        if pat.search(name):
            return cls
    if "at::native" in name or "at::cuda" in name or "c10::" in name:
        return "torch"
    return "other"


@dataclass
class KernelRow:
    name: str
    cls: str
    calls: int = 0
    gpu_us: float = 0.0

    @property
    def mean_us(self) -> float:
        return self.gpu_us / self.calls if self.calls else 0.0


@dataclass
class GemmKey:
    """One GEMM key the engine met: (op, M, N, K, dtype) with nn.Linear's layout (B = weight.t()).
    place "eager": seen as an aten op in the trace, timed by the kernels it launched; "graph": the
    op's (N, K) at a CUDA-graph capture size, replayed from a graph, so neither seen nor timed."""
    op: str
    M: int
    N: int
    K: int
    dtype: str
    place: str = "eager"
    calls: int = 0
    gpu_us: float = 0.0
    # the kernels its ops launched, by name: whether two engines ran the same kernel on a key (on the
    # H200 the same cuBLAS kernel ran 1-2.4% slower on the prefill keys of a tuned engine, run 10)
    kernels: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"op": self.op, "M": self.M, "N": self.N, "K": self.K, "dtype": self.dtype, "place": self.place,
                "calls": self.calls, "gpu_us": self.gpu_us, "kernels": dict(self.kernels)}


@dataclass
class IdleCause:
    """The GPU's idle gaps that ended with a kernel launched by one host op: `op` is the innermost
    op enclosing that launch on the host (an aten op, a custom op such as `_vllm_fa3_C::fwd`), else
    the launch call itself (`cudaGraphLaunch`: a CUDA-graph replay). `late_us`: the part of those
    gaps during which the launch had not yet been made (the GPU waited on the host); the rest it
    waited with the launch already queued (a stream wait, a copy, a sync)."""
    op: str
    gaps: int = 0
    idle_us: float = 0.0
    late_us: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"op": self.op, "gaps": self.gaps, "idle_ms": self.idle_us / 1e3, "late_ms": self.late_us / 1e3}


@dataclass
class EngineProfile:
    kernels: list[KernelRow]
    gpu_busy_us: float
    span_us: float
    steps: int
    eager_ops: list[tuple[str, int]] = field(default_factory=list)  # (aten op, kernel launches)
    graph_launches: int = 0
    gemm_keys: list[GemmKey] = field(default_factory=list)
    idle_causes: list[IdleCause] = field(default_factory=list)

    @property
    def kernel_us(self) -> float:
        return sum(k.gpu_us for k in self.kernels)

    def share(self, prefix: str) -> float:
        total = self.kernel_us
        return sum(k.gpu_us for k in self.kernels if k.cls.startswith(prefix)) / total if total else 0.0

    @property
    def idle_us(self) -> float:
        return max(0.0, self.span_us - self.gpu_busy_us)

    @property
    def idle_us_per_step(self) -> float:
        return self.idle_us / self.steps if self.steps else 0.0

    def top(self, n: int = 15) -> list[KernelRow]:
        return sorted(self.kernels, key=lambda k: -k.gpu_us)[:n]

    def to_dict(self, top: int = 15) -> dict[str, Any]:
        return {"kernel_ms": self.kernel_us / 1e3, "gpu_busy_ms": self.gpu_busy_us / 1e3,
                "span_ms": self.span_us / 1e3, "steps": self.steps,
                "idle_us_per_step": self.idle_us_per_step, "triton_share": self.share("triton"),
                "share_by_class": self.shares(), "graph_launches": self.graph_launches,
                "eager_ops": self.eager_ops[:20], "gemm_keys": [k.as_dict() for k in self.gemm_keys],
                "idle_causes": [c.as_dict() for c in self.idle_causes[:top]],
                "top_kernels": [{"name": k.name, "class": k.cls, "calls": k.calls, "gpu_ms": k.gpu_us / 1e3,
                                 "mean_us": k.mean_us} for k in self.top(top)]}

    def shares(self) -> dict[str, float]:
        total = self.kernel_us or 1.0
        out: dict[str, float] = {}
        for k in self.kernels:
            out[k.cls] = out.get(k.cls, 0.0) + k.gpu_us / total
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def load_trace(path: str | Path) -> list[dict]:
    """The traceEvents of a Chrome trace file, gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def _busy_us(intervals: Sequence[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals (kernels on several streams may overlap)."""
    busy, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        busy += cur_e - cur_s
    return busy


class _HostOps:
    """The host ops of a trace by thread, for "which op enclosed this launch": bisect over start times,
    then up the chain of enclosing ops (a thread's ops nest). Walking back op by op instead took 379 s
    on one H200 engine trace (96k events: every CUDA-graph launch lies outside every op)."""

    def __init__(self, events: Sequence[Mapping], prefix: str = ""):
        self.by_tid: dict[Any, list[Mapping]] = {}
        for e in events:
            if e.get("cat") == "cpu_op" and e.get("name", "").startswith(prefix):
                self.by_tid.setdefault(e.get("tid"), []).append(e)
        self.starts, self.parents = {}, {}
        for tid, ops in self.by_tid.items():
            ops.sort(key=lambda e: e["ts"])
            self.starts[tid] = [e["ts"] for e in ops]
            parents, stack = [], []  # the innermost op enclosing each op's start, by index
            for i, op in enumerate(ops):
                while stack and _end(ops[stack[-1]]) < op["ts"]:
                    stack.pop()
                parents.append(stack[-1] if stack else -1)
                stack.append(i)
            self.parents[tid] = parents

    def enclosing(self, tid: Any, ts: float) -> str | None:
        """The innermost op on thread `tid` running at time `ts`, or None."""
        import bisect

        ops, parents = self.by_tid.get(tid, []), self.parents.get(tid, [])
        i = bisect.bisect_right(self.starts.get(tid, []), ts) - 1
        while i >= 0 and _end(ops[i]) < ts:  # ended before: an op enclosing ts encloses this one's start
            i = parents[i]
        return ops[i]["name"] if i >= 0 else None


def _end(op: Mapping) -> float:
    return op["ts"] + op.get("dur", 0)


def _is_launch(e: Mapping) -> bool:
    return e.get("cat") in LAUNCH_CATS and "Launch" in e.get("name", "")


def _eager_ops(events: Sequence[Mapping], kernel_corr: set) -> list[tuple[str, int]]:
    """aten ops whose kernels were launched one by one (cudaLaunchKernel), i.e. outside a CUDA
    graph: the host work of an eager path, counted by the launches they made. The owner of a launch
    is the innermost aten op on its thread that encloses it."""
    host = _HostOps(events, "aten::")
    counts: dict[str, int] = {}
    for launch in events:
        if not _is_launch(launch) or "LaunchKernel" not in launch["name"]:
            continue
        if launch.get("args", {}).get("correlation") not in kernel_corr:
            continue
        op = host.enclosing(launch.get("tid"), launch["ts"])
        if op is not None:
            counts[op] = counts.get(op, 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])


def _idle_causes(events: Sequence[Mapping], kernels: Sequence[Mapping]) -> list[IdleCause]:
    """Every gap in the GPU's busy time (kernels on any stream), charged to the host op that launched
    the kernel ending it, largest idle first. Why: at 64 requests on the H200 the tuned engine's GPU
    idled 102 ms against native's 67 ms for the same batch (results/vllm/h200_run5), more than its
    extra kernel time (15 ms), and the totals alone did not say where."""
    launches = {e.get("args", {}).get("correlation"): e for e in events if _is_launch(e)}
    host = _HostOps(events)
    causes: dict[str, IdleCause] = {}
    busy_end = None
    for k in sorted(kernels, key=lambda k: float(k["ts"])):
        ts, end = float(k["ts"]), float(k["ts"]) + float(k["dur"])
        if busy_end is not None and ts > busy_end:
            launch = launches.get(k.get("args", {}).get("correlation"))
            op = "(no launch in the trace)"
            late = 0.0
            if launch is not None:
                op = host.enclosing(launch.get("tid"), launch["ts"]) or launch["name"]
                late = min(ts, max(busy_end, float(launch["ts"]))) - busy_end
            cause = causes.setdefault(op, IdleCause(op))
            cause.gaps += 1
            cause.idle_us += ts - busy_end
            cause.late_us += late
        busy_end = end if busy_end is None else max(busy_end, end)
    return sorted(causes.values(), key=lambda c: -c.idle_us)


GEMM_OPS = {"aten::mm": "mm", "aten::addmm": "addmm"}  # aten::linear and matmul end in one of these
_DTYPES = {"c10::BFloat16": "bf16", "c10::Half": "fp16", "float": "fp32"}


def _linear_key(e: Mapping) -> tuple[str, int, int, int, str] | None:
    """(op, M, N, K, dtype) of an aten::mm / addmm event recorded with shapes, when B is a
    transposed weight (strides (1, K)): the layout tuner's mm / addmm keys have. Else None."""
    args, op = e.get("args", {}), GEMM_OPS.get(e.get("name", ""))
    dims, strides, types = args.get("Input Dims"), args.get("Input Strides"), args.get("Input type")
    if op is None or not dims or not strides:
        return None
    first = 1 if op == "addmm" else 0  # addmm(bias, a, b)
    try:
        (m, k), (k2, n) = dims[first], dims[first + 1]
        b_strides = strides[first + 1]
        dtype = _DTYPES.get(types[first]) if types else None
    except (IndexError, TypeError, ValueError):
        return None
    if k != k2 or dtype is None or not (b_strides[0] == 1 and (b_strides[1] == k or n == 1)):
        return None
    return op, int(m), int(n), int(k), dtype


def _gemm_keys(events: Sequence[Mapping], kernel_us: Mapping[Any, float],
               capture_sizes: Sequence[int] | None, kernel_name: Mapping[Any, str] | None = None) -> list[GemmKey]:
    """The GEMM keys of the eager path, each timed by the kernels its outermost aten op launched
    (the op's time window on its thread), hottest first; then, when the capture sizes are known,
    the keys replayed from CUDA graphs: the (op, N, K) of every key seen eagerly only above the
    largest capture size (prefill) at each capture size, by M."""
    import bisect

    launches: dict[Any, list[tuple[float, Any]]] = {}
    for e in events:
        if e.get("cat") in LAUNCH_CATS and "Launch" in e.get("name", ""):
            launches.setdefault(e.get("tid"), []).append((e["ts"], e.get("args", {}).get("correlation")))
    for v in launches.values():
        v.sort(key=lambda t: t[0])
    keys: dict[tuple, GemmKey] = {}
    outer_end: dict[Any, float] = {}
    for e in sorted((e for e in events if e.get("cat") == "cpu_op" and e.get("name") in GEMM_OPS),
                    key=lambda e: e["ts"]):
        tid, t0, t1 = e.get("tid"), e["ts"], e["ts"] + e.get("dur", 0)
        if t0 < outer_end.get(tid, float("-inf")):  # inside another GEMM op (a redispatch): counted there
            continue
        outer_end[tid] = t1
        key = _linear_key(e)
        if key is None:
            continue
        row = keys.setdefault(key, GemmKey(*key))
        row.calls += 1
        ts = launches.get(tid, [])
        for _, corr in ts[bisect.bisect_left(ts, (t0,)): bisect.bisect_right(ts, (t1, float("inf")))]:
            row.gpu_us += kernel_us.get(corr, 0.0)
            name = (kernel_name or {}).get(corr)
            if name is not None:
                row.kernels[name] = row.kernels.get(name, 0) + 1
    eager = sorted(keys.values(), key=lambda k: -k.gpu_us)
    if not capture_sizes:
        return eager
    top = max(capture_sizes)
    small = {(k.op, k.N, k.K, k.dtype) for k in eager if k.M <= top}
    pairs = sorted({(k.op, k.N, k.K, k.dtype) for k in eager} - small)
    graph = [GemmKey(op, m, n, kk, dt, "graph") for m in sorted(capture_sizes) for op, n, kk, dt in pairs]
    return eager + graph


def aggregate(events: Iterable[Mapping], steps: int, flaggems: frozenset[str] = frozenset(),
              capture_sizes: Sequence[int] | None = None) -> EngineProfile:
    events = list(events)
    kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
    rows: dict[str, KernelRow] = {}
    for k in kernels:
        row = rows.setdefault(k["name"], KernelRow(k["name"], classify(k["name"], flaggems)))
        row.calls += 1
        row.gpu_us += float(k["dur"])
    intervals = [(float(k["ts"]), float(k["ts"]) + float(k["dur"])) for k in kernels]
    span = (max(e for _, e in intervals) - min(s for s, _ in intervals)) if intervals else 0.0
    corr = {k.get("args", {}).get("correlation") for k in kernels}
    graphs = sum(1 for e in events if e.get("cat") in LAUNCH_CATS and "GraphLaunch" in e.get("name", ""))
    kernel_us: dict[Any, float] = {}
    kernel_name: dict[Any, str] = {}
    for k in kernels:
        c = k.get("args", {}).get("correlation")
        kernel_us[c] = kernel_us.get(c, 0.0) + float(k["dur"])
        kernel_name[c] = k["name"]
    return EngineProfile(list(rows.values()), _busy_us(intervals), span, steps, _eager_ops(events, corr), graphs,
                         _gemm_keys(events, kernel_us, capture_sizes, kernel_name), _idle_causes(events, kernels))


@functools.lru_cache(maxsize=1)
def flaggems_kernel_names() -> frozenset[str]:
    """The name of every @triton.jit function in the installed flag_gems' source, read without
    importing it (no GPU needed). Reading beats importing: FlagGems loads its per-GPU backend
    modules (the Hopper mm's `mm_kernel_general_host_tma`) under names outside `flag_gems.`, so
    walking the imported modules missed them (H200, flag_gems 5.0.2). Kernels its code generator
    writes at run time (`_<op>_jit_function`) are told by name (`classify`). No flag_gems: empty."""
    return _jit_names("flag_gems")


@functools.cache
def tuner_kernel_names() -> frozenset[str]:
    """The name of every @triton.jit function in tuner's kernels package: a hand-kept list named two
    kernels and the H200 profile of session 7 filed tuner's persistent_mm_kernel (17% of the
    engine's kernel time) under triton/other."""
    return _jit_names("kernels")


def _jit_names(package: str) -> frozenset[str]:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    names = set()
    for path in Path(list(spec.submodule_search_locations)[0]).rglob("*.py"):
        try:
            tree = ast.parse(path.read_text(errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and any(_is_jit(d) for d in node.decorator_list):
                names.add(node.name)
    return frozenset(names)


def _is_jit(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")) == "jit"


def summarise_dir(trace_dir: str | Path, steps: int, flaggems: frozenset[str] = frozenset(),
                  top: int = 15, capture_sizes: Sequence[int] | None = None) -> dict[str, Any]:
    """The summary of the newest trace file in a folder vLLM's profiler wrote (one worker)."""
    files = sorted(Path(trace_dir).glob("*.pt.trace.json*"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no *.pt.trace.json(.gz) in {trace_dir}")
    out = aggregate(load_trace(files[-1]), steps, flaggems, capture_sizes).to_dict(top)
    out["trace"] = files[-1].name
    return out


def sample_trace(path: str | Path, dest: str | Path, max_kernels: int = 400) -> Path:
    """A small excerpt of a real trace for tests: the first `max_kernels` kernels after the middle,
    the runtime launches and aten ops of the same time window."""
    events = [e for e in load_trace(path) if e.get("ph") == "X" and "ts" in e]
    kernels = sorted((e for e in events if e.get("cat") == "kernel"), key=lambda e: e["ts"])
    window = kernels[len(kernels) // 2: len(kernels) // 2 + max_kernels]
    corr = {k.get("args", {}).get("correlation") for k in window}
    launches = [e for e in events if e.get("cat") in LAUNCH_CATS and e.get("args", {}).get("correlation") in corr]
    t0 = min([e["ts"] for e in launches + window] or [0])
    t1 = max([e["ts"] for e in window] or [0])
    ops = [e for e in events if e.get("cat") == "cpu_op" and t0 <= e["ts"] <= t1]
    # the launches of those ops too, with their kernels (an eager GEMM's time needs both)
    seen = {id(e) for e in launches}
    more = [e for e in events if e.get("cat") in LAUNCH_CATS and t0 <= e["ts"] <= t1 and id(e) not in seen]
    corr2 = {e.get("args", {}).get("correlation") for e in more} - corr
    window += [e for e in kernels if e.get("args", {}).get("correlation") in corr2]
    launches += more
    keep = [{k: e[k] for k in ("ph", "cat", "name", "ts", "dur", "tid", "pid", "args") if k in e}
            for e in window + launches + ops]
    dest = Path(dest)
    with gzip.open(dest, "wt") as f:
        json.dump({"traceEvents": keep}, f)
    return dest


if __name__ == "__main__":  # on the GPU host: python -m tuner.profiling.engine_trace DIR STEPS OUT.json [RESULT.json]
    import sys

    result = json.loads(Path(sys.argv[4]).read_text()) if len(sys.argv) > 4 else {}
    sizes = (result.get("engine") or {}).get("capture_sizes")
    summary = summarise_dir(sys.argv[1], int(sys.argv[2]), flaggems_kernel_names(), capture_sizes=sizes)
    Path(sys.argv[3]).write_text(json.dumps(summary, indent=1))
