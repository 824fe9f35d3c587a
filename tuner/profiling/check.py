"""The consistency check: FlagGems ops against native ones, on inputs recorded from the workload.

1. Capture: run the workload once under a TorchDispatchMode that keeps, for each distinct
   (aten op, input shapes, dtypes) among the ops FlagGems registers, one copy of the inputs
   (taken before the op runs, strides kept, moved to the host), capped in count and bytes.
2. Save: one torch.save file per op, all its recorded input sets.
3. Check: per op, a fresh subprocess (`python -m tuner.profiling.check_worker`) computes the native result,
   then the candidate's (default: FlagGems with only that op enabled), and compares them with
   dtype-aware tolerances. A subprocess that dies, raises a CUDA error, or gives no answer within
   the timeout is a "crash" with its reason; the harness starts a new one for the remaining inputs.
4. The failing set (mismatch or crash) is stored; `exclude_list` turns it into the FlagGems
   function names `flag_gems.enable(unused=...)` takes (`tuner serve` reads it).
5. End to end (GPU only): the workload LLM's logits over N greedy decode steps, FlagGems minus the
   exclude list vs native: max abs error and top-1 agreement.

The candidate is pluggable ("module:function", called as `fn(func, args, kwargs, op_key)` inside
the subprocess) so the capture/subprocess/compare harness is testable on CPU with candidates that
are real code, without FlagGems kernels.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

FLAGGEMS_CANDIDATE = "tuner.profiling.check_worker:flaggems_candidate"
REPO = Path(__file__).resolve().parents[2]

# ops whose result is random or uninitialised: nothing to compare
_NONDETERMINISTIC = ("rand", "randn", "rand_like", "randn_like", "randperm", "normal", "normal_", "uniform_",
                     "exponential_", "bernoulli_", "multinomial", "native_dropout", "empty", "empty_like")


# --- what FlagGems registers ---------------------------------------------------------------------

_TABLE: dict[str, str] | None = None


def flaggems_table() -> dict[str, str]:
    """aten key FlagGems registers ("add.Tensor", "mm") -> its function name ("add", "mm").

    Read from flag_gems/__init__.py's `_FULL_CONFIG` without importing flag_gems (its import
    needs a GPU). Empty when flag_gems is not installed. Inside the GPU subprocess the function
    name is re-read from the imported module (vendor code can swap functions).
    """
    global _TABLE
    if _TABLE is not None:
        return _TABLE
    spec = importlib.util.find_spec("flag_gems")
    table: dict[str, str] = {}
    if spec is not None and spec.origin:
        tree = ast.parse(Path(spec.origin).read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_FULL_CONFIG" for t in node.targets):
                for item in getattr(node.value, "elts", []):
                    elts = getattr(item, "elts", [])
                    if len(elts) >= 2 and isinstance(elts[0], ast.Constant):
                        fn = elts[1]
                        name = fn.id if isinstance(fn, ast.Name) else getattr(fn, "attr", ast.unparse(fn))
                        table[str(elts[0].value)] = name
    _TABLE = table
    return table


def op_key(func) -> str:
    """The name torch.library uses for an OpOverload: "mm", "add.Tensor"."""
    name = func._schema.name.split("::", 1)[-1]
    overload = func._schema.overload_name
    return f"{name}.{overload}" if overload else name


def qualname(func) -> str:
    """"aten.add.Tensor": resolvable again as torch.ops.aten.add.Tensor."""
    ns = func._schema.name.split("::", 1)[0]
    packet = func._schema.name.split("::", 1)[-1]
    return f"{ns}.{packet}.{func._overloadname}"


def resolve_op(name: str):
    ns, packet, overload = name.split(".", 2)
    return getattr(getattr(getattr(torch.ops, ns), packet), overload)


def is_nondeterministic(key: str) -> bool:
    return key.split(".")[0] in _NONDETERMINISTIC


# --- capture -------------------------------------------------------------------------------------

def _snapshot(t: torch.Tensor) -> torch.Tensor:
    """A host copy of `t` with the same sizes and strides (expanded / transposed / offset views too)."""
    if t.numel() == 0:
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu")
    extent = 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride()) if s > 0)
    flat = t.as_strided((extent,), (1,), t.storage_offset())
    return flat.detach().to("cpu", copy=True).as_strided(t.shape, t.stride(), 0)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def describe_inputs(args, kwargs) -> str:
    """ "bfloat16[512, 3584] (strides 1,3584), float32[], dim=-1" — shapes, dtypes, scalars."""
    def one(a):
        if isinstance(a, torch.Tensor):
            s = f"{str(a.dtype).removeprefix('torch.')}{list(a.shape)}"
            if a.dim() > 1 and not a.is_contiguous():
                s += f" (strides {','.join(map(str, a.stride()))})"
            return s
        if isinstance(a, (list, tuple)) and any(isinstance(x, torch.Tensor) for x in a):
            return "[" + ", ".join(one(x) for x in a) + "]"
        return repr(a)
    parts = [one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()]
    return ", ".join(parts)


@dataclass
class Record:
    op: str  # FlagGems / torch.library key, "add.Tensor"
    qualname: str  # "aten.add.Tensor"
    gems_fn: str | None
    inputs: str  # describe_inputs
    args: tuple
    kwargs: dict
    nbytes: int


@dataclass
class CaptureStats:
    seen_ops: dict[str, int] = field(default_factory=dict)  # FlagGems-registered ops met -> calls
    dropped: dict[str, str] = field(default_factory=dict)  # "op inputs" -> why not kept


class Capture(TorchDispatchMode):
    """Keeps one input set per distinct (op, shapes, dtypes) of the ops in `allowed`."""

    def __init__(self, allowed: dict[str, str] | None, max_per_op: int = 3,
                 max_record_bytes: int = 256 << 20, max_total_bytes: int = 2 << 30):
        super().__init__()
        self.allowed = allowed
        self.max_per_op = max_per_op
        self.max_record_bytes = max_record_bytes
        self.max_total_bytes = max_total_bytes
        self.records: list[Record] = []
        self.stats = CaptureStats()
        self._seen: set = set()
        self._per_op: dict[str, int] = {}
        self._total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            recorded = self._maybe_record(func, args, kwargs)
        except Exception as e:  # recording must never change what the workload does
            self.stats.dropped[f"{func}"] = f"not recorded: {type(e).__name__}: {e}"
            recorded = False
        if not recorded and _composite(func):
            # under inference mode composite ops (linear, matmul, sdpa, ...) arrive whole; the
            # backend, where FlagGems registers, sees what they decompose into: record that
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        return func(*args, **kwargs)

    def _maybe_record(self, func, args, kwargs) -> bool:
        """True when `func` is an op to check (whether or not this input set was kept)."""
        if not hasattr(func, "_schema"):
            return False
        key = op_key(func)
        if self.allowed is not None and key not in self.allowed:
            return False
        self.stats.seen_ops[key] = self.stats.seen_ops.get(key, 0) + 1
        leaves, _ = tree_flatten((args, kwargs))
        sig = (key, tuple((tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else None for x in leaves))
        if sig in self._seen or self._per_op.get(key, 0) >= self.max_per_op:
            return True
        self._seen.add(sig)
        size = sum(_nbytes(x) for x in leaves if isinstance(x, torch.Tensor))
        desc = describe_inputs(args, kwargs)
        if size > self.max_record_bytes or self._total + size > self.max_total_bytes:
            self.stats.dropped[f"{key} {desc}"] = f"inputs of {size / 2**20:.0f} MiB exceed the capture cap"
            return True
        snap = lambda x: _snapshot(x) if isinstance(x, torch.Tensor) else x  # noqa: E731
        self.records.append(Record(key, qualname(func), (self.allowed or {}).get(key), desc,
                                   tree_map(snap, tuple(args)), tree_map(snap, dict(kwargs)), size))
        self._per_op[key] = self._per_op.get(key, 0) + 1
        self._total += size
        return True


def _composite(func) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd")
    except Exception:
        return False


def capture(steps: Sequence, allowed: dict[str, str] | None = None, **caps) -> Capture:
    """Run `steps` (objects with .run()) once under a Capture; `allowed` defaults to FlagGems' table."""
    mode = Capture(flaggems_table() if allowed is None else allowed, **caps)
    with mode:
        for step in steps:
            step.run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return mode


def save_records(records: Iterable[Record], folder: str | Path) -> list[Path]:
    """One file per op (`<n>-<op>.pt`) holding all its input sets; returns the files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    by_op: dict[str, list[Record]] = {}
    for r in records:
        by_op.setdefault(r.op, []).append(r)
    files = []
    for i, (key, recs) in enumerate(sorted(by_op.items())):
        path = folder / f"{i:03d}-{''.join(c if c.isalnum() else '_' for c in key)}.pt"
        torch.save({"op": key, "qualname": recs[0].qualname, "gems_fn": recs[0].gems_fn,
                    "variants": [{"inputs": r.inputs, "args": r.args, "kwargs": r.kwargs} for r in recs]}, path)
        files.append(path)
    return files


# --- the subprocess harness ------------------------------------------------------------------------

@dataclass
class OpResult:
    op: str
    gems_fn: str | None
    inputs: str
    status: str  # pass | mismatch | crash | skipped
    max_abs_error: float | None = None
    rel_error: float | None = None
    detail: str | None = None


def _last_lines(text: str, n: int = 3) -> str:
    keep = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    # prefer the line that names the error
    for ln in reversed(keep):
        if "Error" in ln or "error" in ln:
            return ln[:500]
    return " | ".join(keep[-n:])[:500]


def _exit_reason(code: int) -> str:
    if code < 0:
        import signal
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def check_file(path: str | Path, candidate: str = FLAGGEMS_CANDIDATE, device: str = "cuda",
               timeout_s: float = 300.0, env: dict[str, str] | None = None) -> list[OpResult]:
    """Check every input set of one op file, each subprocess going on until it dies.

    `timeout_s` is the longest the harness waits for the next answer (FlagGems' first call of a
    new GEMM shape benchmarks every config: give it minutes).
    """
    data_head = torch.load(path, weights_only=False)  # our own file, written by save_records
    key, gems_fn, variants = data_head["op"], data_head["gems_fn"], data_head["variants"]
    results: dict[int, OpResult] = {}
    start = 0
    while start < len(variants):
        with tempfile.NamedTemporaryFile("r", suffix=".jsonl", delete=False) as fh:
            out_path = fh.name
        cmd = [sys.executable, "-m", "tuner.profiling.check_worker", str(path), "--out", out_path, "--start", str(start),
               "--candidate", candidate, "--device", device]
        child_env = {**os.environ, **(env or {})}
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), child_env.get("PYTHONPATH", "")) if p)
        child_env.pop("TRITON_INTERPRET", None)  # FlagGems' import breaks under the interpreter
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(cmd, cwd=str(REPO), env=child_env, stdout=err, stderr=subprocess.STDOUT)
            last_progress, seen_lines, timed_out = time.monotonic(), 0, False
            while proc.poll() is None:
                time.sleep(0.05)
                n = _count_lines(out_path)
                if n != seen_lines:
                    seen_lines, last_progress = n, time.monotonic()
                elif time.monotonic() - last_progress > timeout_s:
                    proc.kill()
                    proc.wait()
                    timed_out = True
            err.seek(0)
            log = err.read()
        lines = _read_jsonl(out_path)
        os.unlink(out_path)
        current = None
        for msg in lines:
            if msg.get("gems_fn"):
                gems_fn = msg["gems_fn"]
            if "start" in msg:
                current = msg["start"]
            elif "result" in msg:
                r = msg["result"]
                results[r["index"]] = OpResult(key, gems_fn, variants[r["index"]]["inputs"], r["status"],
                                               r.get("max_abs_error"), r.get("rel_error"), r.get("detail"))
                current = None
        if current is None:
            done = max((i for i in results if i >= start), default=start - 1)
            if proc.returncode == 0 or done >= start:
                # finished, or exited after reporting (a CUDA error): go on after the last answer
                start = done + 1 if proc.returncode != 0 else len(variants)
                continue
            current = start  # died before its first input (import, load): blame that input
        if current not in results:
            if timed_out:
                reason = f"no result within {timeout_s:g} s (hung or still compiling); killed"
            else:
                reason = _exit_reason(proc.returncode)
                tail = _last_lines(log)
                if tail:
                    reason += f": {tail}"
            results[current] = OpResult(key, gems_fn, variants[current]["inputs"], "crash", detail=reason)
        start = current + 1
    for i, v in enumerate(variants):  # a subprocess that never got going still leaves a row
        results.setdefault(i, OpResult(key, gems_fn, v["inputs"], "crash", detail="not reached"))
    for r in results.values():
        r.gems_fn = gems_fn
    return [results[i] for i in sorted(results)]


def _count_lines(path: str) -> int:
    try:
        with open(path) as fh:
            return sum(1 for _ in fh)
    except OSError:
        return 0


def _read_jsonl(path: str) -> list[dict]:
    out = []
    with open(path) as fh:
        for ln in fh:
            try:
                out.append(json.loads(ln))
            except json.JSONDecodeError:
                pass  # a line cut by a crash
    return out


def check_files(files: Sequence[Path], candidate: str = FLAGGEMS_CANDIDATE, device: str = "cuda",
                timeout_s: float = 300.0, jobs: int = 1,
                on_done: Callable[[list[OpResult]], None] | None = None) -> list[OpResult]:
    """check_file over many ops, `jobs` subprocesses at a time; results in file order."""
    lock = threading.Lock()

    def one(path):
        res = check_file(path, candidate, device, timeout_s)
        if on_done:
            with lock:
                on_done(res)
        return res

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return [r for rs in pool.map(one, files) for r in rs]


# --- comparing ---------------------------------------------------------------------------------------

# max |candidate - native| must stay within RTOL * max |native| + ATOL (norm-wise: a GEMM or
# reduction summed in another order differs by a few units in the last place of the largest values)
RTOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
ATOL = 1e-6


def compare(native, candidate) -> tuple[str, float | None, float | None, str | None]:
    """(status, max_abs_error, rel_error, detail) of two results (tensors, tuples, scalars)."""
    n_leaves, n_spec = tree_flatten(native)
    c_leaves, c_spec = tree_flatten(candidate)
    if len(n_leaves) != len(c_leaves):
        return "mismatch", None, None, f"{len(c_leaves)} outputs where native gives {len(n_leaves)}"
    worst_abs, worst_rel, detail = 0.0, 0.0, None
    for i, (n, c) in enumerate(zip(n_leaves, c_leaves)):
        if not isinstance(n, torch.Tensor):
            if isinstance(n, (int, float, bool)) and isinstance(c, (int, float, bool)):
                if not (n == c or (isinstance(n, float) and math.isnan(n) and math.isnan(c))):
                    return "mismatch", None, None, f"output {i}: {c!r} where native gives {n!r}"
            continue
        if not isinstance(c, torch.Tensor):
            return "mismatch", None, None, f"output {i}: {type(c).__name__} where native gives a tensor"
        if tuple(c.shape) != tuple(n.shape) or c.dtype != n.dtype:
            return ("mismatch", None, None, f"output {i}: {c.dtype}{list(c.shape)} where native gives "
                    f"{n.dtype}{list(n.shape)}")
        if n.numel() == 0:
            continue
        n64, c64 = n.detach().to("cpu", torch.float64), c.detach().to("cpu", torch.float64)
        if not n.dtype.is_floating_point and not n.dtype.is_complex:
            bad = int((n64 != c64).sum())
            if bad:
                return "mismatch", float((n64 - c64).abs().max()), None, f"output {i}: {bad} of {n.numel()} values differ"
            continue
        n_nan, c_nan = torch.isnan(n64), torch.isnan(c64)
        if not torch.equal(n_nan, c_nan):
            return "mismatch", math.inf, math.inf, f"output {i}: NaN in {int(c_nan.sum())} places where native has {int(n_nan.sum())}"
        n_inf, c_inf = torch.isinf(n64), torch.isinf(c64)
        if not torch.equal(n_inf, c_inf) or not torch.equal(n64[n_inf], c64[c_inf]):
            return "mismatch", math.inf, math.inf, f"output {i}: infinities differ from native"
        finite = ~(n_nan | n_inf)
        if not finite.any():
            continue
        diff = (n64[finite] - c64[finite]).abs()
        scale = float(n64[finite].abs().max())
        err = float(diff.max())
        rel = err / scale if scale > 0 else (0.0 if err == 0 else math.inf)
        worst_abs, worst_rel = max(worst_abs, err), max(worst_rel, rel)
        tol = RTOL.get(n.dtype, 1e-2) * scale + ATOL
        if err > tol:
            frac = float((diff > tol).double().mean())
            detail = (f"output {i}: max abs error {err:.3g} > {tol:.3g} ({RTOL.get(n.dtype, 1e-2):g} x max|native| "
                      f"{scale:.3g}); {frac:.1%} of values off")
            return "mismatch", worst_abs, worst_rel, detail
    return "pass", worst_abs, worst_rel, None


# --- the flow ----------------------------------------------------------------------------------------

@dataclass
class CheckReport:
    results: list[OpResult]
    seen_ops: dict[str, int]
    dropped: dict[str, str]
    candidate: str
    note: str | None = None
    e2e: dict | None = None
    capture_s: float = 0.0
    check_s: float = 0.0

    @property
    def failing(self) -> list[OpResult]:
        return [r for r in self.results if r.status in ("mismatch", "crash")]

    def exclude(self) -> list[str]:
        return sorted({r.gems_fn or r.op for r in self.failing})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["exclude"] = self.exclude()
        d["counts"] = {s: sum(r.status == s for r in self.results) for s in ("pass", "mismatch", "crash", "skipped")}
        return d


def check_steps(steps: Sequence, candidate: str = FLAGGEMS_CANDIDATE, device: str = "cuda",
                timeout_s: float = 300.0, jobs: int = 1, allowed: dict[str, str] | None = None,
                inputs_dir: str | Path | None = None, ops: Iterable[str] | None = None,
                on_done: Callable[[list[OpResult]], None] | None = None, **caps) -> CheckReport:
    """Capture the steps' inputs, then check each op in subprocesses. `ops` limits the ops checked."""
    t0 = time.perf_counter()
    cap = capture(steps, allowed, **caps)
    records = cap.records
    if ops is not None:
        wanted = set(ops)
        records = [r for r in records if r.op in wanted]
    skipped = [OpResult(r.op, r.gems_fn, r.inputs, "skipped", detail="random or uninitialised result: nothing to compare")
               for r in records if is_nondeterministic(r.op)]
    records = [r for r in records if not is_nondeterministic(r.op)]
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tuner-check-") as tmp:
        folder = Path(inputs_dir) if inputs_dir else Path(tmp)
        files = save_records(records, folder)
        del records, cap.records
        results = check_files(files, candidate, device, timeout_s, jobs, on_done)
    return CheckReport(results + skipped, cap.stats.seen_ops, cap.stats.dropped, candidate,
                       capture_s=t1 - t0, check_s=time.perf_counter() - t1)


def flaggems_importable() -> str | None:
    """None when flag_gems imports in a fresh process on this machine, else why not."""
    if importlib.util.find_spec("flag_gems") is None:
        return "flag_gems is not installed"
    if not torch.cuda.is_available():
        return "FlagGems kernels need an NVIDIA GPU, and none is visible"
    proc = subprocess.run([sys.executable, "-c", "import flag_gems"], capture_output=True, text=True, timeout=300)
    return None if proc.returncode == 0 else f"flag_gems does not import: {_last_lines(proc.stderr)}"


# --- end to end ----------------------------------------------------------------------------------------

def e2e_logits(llm, exclude: Sequence[str], steps: int = 8, batch: int = 1, prompt_tokens: int = 64,
               seed: int = 0) -> dict:
    """Greedy decode of `steps` tokens natively, then the same token sequence with FlagGems
    enabled minus `exclude`: per-step max abs logit error and top-1 agreement. GPU only."""
    device = next(llm.parameters()).device
    if device.type != "cuda":
        return {"status": "skipped: needs a GPU"}
    import flag_gems
    from transformers import DynamicCache

    g = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(llm.config.vocab_size, (batch, prompt_tokens), generator=g).to(device)

    def run(tokens=None):
        cache = DynamicCache(config=llm.config)
        out, toks = [], []
        with torch.inference_mode():
            logits = llm(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
            for i in range(steps):
                out.append(logits.float().cpu())
                tok = tokens[i] if tokens is not None else logits.argmax(-1, keepdim=True)
                toks.append(tok)
                logits = llm(input_ids=tok, cache=cache, use_cache=True).logits[:, -1]
        torch.cuda.synchronize()
        return out, toks

    native, tokens = run()
    try:
        with flag_gems.use_gems(exclude=list(exclude)):
            gems, _ = run(tokens)  # teacher-forced: both see the same tokens
    except Exception as e:  # a fault here is the finding
        return {"status": "crash", "detail": _last_lines(f"{type(e).__name__}: {e}"), "exclude": list(exclude)}
    per_step = []
    for n, c in zip(native, gems):
        per_step.append({"max_abs_error": float((n - c).abs().max()),
                         "top1_agreement": float((n.argmax(-1) == c.argmax(-1)).float().mean()),
                         "max_abs_logit": float(n.abs().max())})
    return {
        "status": "done", "steps": steps, "batch": batch, "prompt_tokens": prompt_tokens, "exclude": list(exclude),
        "max_abs_error": max(s["max_abs_error"] for s in per_step),
        "top1_agreement": sum(s["top1_agreement"] for s in per_step) / len(per_step),
        "per_step": per_step,
    }
