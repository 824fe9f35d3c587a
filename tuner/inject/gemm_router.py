"""Route every GEMM key to whichever kernel measured faster: tuned FlagGems, tuner's split-K,
persistent TMA or stream-K GEMM, or native.

Why a router and not FlagGems' own registration: on the H200 tuned FlagGems GEMMs beat cuBLAS on
only 4 of the 12 vLLM decode keys (results/vllm/tune_keys: gate_up M=16/64 1.09x/1.03x, lm_head
M=16/64 1.03x/1.04x) and lose up to 0.81x elsewhere; FlagGems' registration sends every key to its
kernel. And vLLM's Inductor graphs call GEMMs as `aten::mm.out` / `aten::addmm.out`
(`extern_kernels.mm(..., out=buf)`), which a `flag_gems.enable(unused=["addmm"])` leaves registered
(FlagGems names that overload `addmm_out`) and which an `aten::mm` override never sees.

So the router registers its own CUDA kernels for `mm`, `mm.out`, `addmm`, `addmm.out`, `bmm` and
`bmm.out` (only for ops that have at least one non-native route); each looks the call's (N, K,
dtype, M) up in a table built from the stored records (for bmm also its batch and operand layout,
kernels/bmm.py) and calls FlagGems' function, one of tuner's kernels, or the ATen kernel that was
registered before (cuBLAS), captured with `torch.library.get_kernel`.

A record routes the runtime M near its own M only: nearest tuned M in log space, within a factor
of two of it (a decode win at M=64 says nothing about a 4096-token prefill chunk), and needing no
more BLOCK_M tiles than the tuned M did (the measured grid: on the H200 at 64 concurrent requests,
lm_head at M = 19..30 with the M=16 config, BLOCK_M 16, took 340-390 µs per call against cuBLAS'
~255 µs). A record at M >= PREFILL_M (compute-bound: prefill) routes its own M only: in vLLM on
the H200 (results/vllm run 10b) the last, partial prefill chunk, M = 3305, ran the M = 4096
configs 1.046x (gate_up), 1.104x (down), 1.163x (qkv) cuBLAS's time, where those configs ran
1.017x, 0.968x, 1.046x at 4096; cuBLAS changes its tile with M, a tuned config does not.
Everything else stays native: the router never sends a key to a kernel that was not measured
faster on it (or, with `--route-within R` above 1, at most R times cuBLAS's time).

Per place: a route applies inside CUDA-graph captures (FlagGems' host cost is paid once, at
capture) and, on the eager path, only where its GPU win covers the extra host cost (EAGER_HOST_US)
or where the kernel runs so long that its launch hides behind its own GPU time (HIDES x HOST_US:
vLLM runs prefill eagerly, and a 4096-token GEMM takes 150-1600 µs). On the H200 at 64 concurrent
requests vLLM's lm_head runs eagerly every decode step: routed to FlagGems its aten::mm took 377 µs
of host time (cuBLAS: 113 µs) for an 8 µs GPU win, on a 256 µs kernel.
"""
from __future__ import annotations

import bisect
import logging
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tuner.inject.registry import OVERRIDE, Context, injector

logger = logging.getLogger(__name__)

NATIVE, FLAGGEMS, SPLITK, PERSISTENT, STREAMK = "native", "flaggems", "splitk", "persistent", "streamk"
TARGETS = (NATIVE, FLAGGEMS, SPLITK, PERSISTENT, STREAMK)
TARGET_NAMES = {FLAGGEMS: "FlagGems", SPLITK: "split-K", PERSISTENT: "persistent", STREAMK: "stream-K",
                NATIVE: "native"}  # as every line tuner prints names them, in that order
OWN = (SPLITK, PERSISTENT, STREAMK)  # tuner's own kernels (their records carry the kernel's source hash)
REACH = 2  # a tuned M routes runtime M in [M / REACH, M * REACH] (and only where it is the nearest)
# ... below this M; from it on a record routes its own M only: a compute-bound config does not carry
# to another M (the partial prefill chunk of the module's docstring). Where compute-bound starts on
# the H200: the search's single timings and the side-by-side pass agree within 2% on 17 of the 20
# keys at M <= 64 and differ 6-16% at M >= 512 (results/gemm_h200/session16); vLLM's CUDA graphs
# (decode, M <= 128 in every engine tuner ran) stay below it
PREFILL_M = 512
# extra host time per eager GEMM call over cuBLAS, by target: FlagGems' from vLLM's lm_head at M=64
# under torch.profiler (377 - 113 µs); tuner's kernels from tuner/benchmarks/host_cost.py on the
# H200, all in one run (results/gemm_h200/session5/host_cost.json: a 16x128x64 GEMM, the GPU idle:
# cuBLAS 13.5 µs, split-K 29.7, persistent 47.0, stream-K 53.4 with its workspace allocation).
# An eager route must win more GPU time than this per call ...
EAGER_HOST_US = {FLAGGEMS: 250.0, SPLITK: 16.2, PERSISTENT: 33.5, STREAMK: 39.9}
# ... or run HIDES times its whole host time per call (the same run: FlagGems 75.5 µs, the others
# above): the CPU then stays ahead of the GPU (vLLM's lm_head at M=64, 256 µs of GPU time against
# FlagGems' 4 x 75.5, stays native)
HOST_US = {FLAGGEMS: 75.5, SPLITK: 29.7, PERSISTENT: 47.0, STREAMK: 53.4}
HIDES = 4
ROUTED_OPS = ("mm", "addmm", "bmm")  # the tuner kernels (record["kernel"]) the router serves
_LIBS: list[Any] = []  # a torch.library.Library deregisters its kernels when collected


@dataclass(frozen=True)
class Route:
    target: str  # one of TARGETS
    config: Mapping[str, Any] | None = None
    tuned_m: int | None = None
    eager: bool = False  # also outside CUDA-graph captures (see eager_worthwhile)


def eager_worthwhile(record: Mapping[str, Any], within: float = 1.0) -> bool:
    """Whether a routed record's route pays on the eager path: its GPU gain per call covers the
    target's extra host time, or its kernel is long enough to hide the whole launch."""
    target = record_target(record, within)
    if target == NATIVE:
        return False
    tuned, native = record["time_us"], record["native_us"]
    return native - tuned >= EAGER_HOST_US[target] or tuned >= HIDES * HOST_US[target]


def record_target(record: Mapping[str, Any], within: float = 1.0) -> str:
    """Where a stored record's key should run: its tuned kernel only if it was timed faster than
    native beside it (time_us < native_us), or with `within` > 1 (`--route-within`) at most that
    factor slower: a Triton kernel kept where it is at cuBLAS's speed, for the engine's Triton share
    (on the H200 the prefill gate_up at M=4096 was 1.005x cuBLAS and a third of the kernel time at
    64 requests: results/vllm/h200_run4). Below 1 a route must win by that margin. A record without
    a native timing proves nothing."""
    tuned, native = record.get("time_us"), record.get("native_us")
    if not tuned or not native or tuned >= native * within:
        return NATIVE
    variant = str((record.get("config") or {}).get("variant", ""))
    if variant in OWN:  # tuner's own kernels, for mm and addmm
        return variant
    return FLAGGEMS if variant.startswith("fg_") or record.get("kernel") == "addmm" else NATIVE


def group_key(record: Mapping[str, Any]) -> tuple | None:
    """The table a record's key routes in: (op, N, K, dtype), for bmm with its BATCH and LAYOUT
    after them (a batch of 1024 resampler positions says nothing about another batch); None for
    what the router does not route."""
    k = record["key"]
    if record.get("kernel") == "bmm":
        return ("bmm", int(k["N"]), int(k["K"]), record["dtype"], int(k["BATCH"]), int(k["LAYOUT"]))
    if record.get("kernel") not in ROUTED_OPS or int(k.get("BT", 1)) != 1:
        return None  # only nn.Linear's layout (B = W^T) is what the engines call
    return (record["kernel"], int(k["N"]), int(k["K"]), record["dtype"])


def _groups(records: Iterable[Mapping[str, Any]]) -> dict[tuple, dict[int, Mapping]]:
    groups: dict[tuple, dict[int, Mapping]] = {}
    for r in records:
        group = group_key(r)
        if group is None:
            continue
        k = r["key"]
        g = groups.setdefault(group, {})
        m = int(k["M"])
        if m in g and g[m]["config"] != r["config"]:
            raise ValueError(f"two different {r['kernel']} winners for {dict(k)} {r['dtype']}")
        g[m] = r
    return groups


def route_config(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record's config in mm's names (BLOCK_M, ...): what tuner's kernels take and what the tile
    check reads (addmm's and bmm's spaces name their tiles after FlagGems' kernels: BLOCK_SIZE_M,
    TILE_M, ...)."""
    cfg = dict(record["config"])
    if record.get("kernel") in ("addmm", "bmm") and "BLOCK_M" not in cfg:
        from kernels import get_kernel

        return get_kernel(record["kernel"]).mm_config(cfg)
    return cfg


def more_tiles(m: int, tuned_m: int, config: Mapping[str, Any]) -> bool:
    """Whether M needs more BLOCK_M tiles than the tuned M (so more work than was measured)."""
    bm = int(config.get("BLOCK_M") or 0)
    return bm > 0 and -(-m // bm) > -(-tuned_m // bm)


def plan_routes(records: Iterable[Mapping[str, Any]], max_tokens: int,
                within: float = 1.0) -> dict[tuple, list[tuple[int, int, Route]]]:
    """group_key -> [(M_lo, M_hi, Route)] for the runtime M that do not go native."""
    plan: dict[tuple, list[tuple[int, int, Route]]] = {}
    for group, by_m in sorted(_groups(records).items()):
        tuned = sorted(by_m)
        configs = {t: route_config(by_m[t]) for t in tuned}
        # nearest tuned M in log space without Fractions (plan_routes runs in every engine process):
        # t[i] serves M while M*M <= t[i]*t[i+1] (a tie goes to the smaller, as _select.nearest_m)
        bounds = [a * b for a, b in zip(tuned, tuned[1:])]
        runs: list[tuple[int, int, Route]] = []
        for m in range(1, max_tokens + 1):
            t = tuned[bisect.bisect_left(bounds, m * m)]
            if not (t <= m * REACH and m <= t * REACH) or more_tiles(m, t, configs[t]):
                continue
            if t >= PREFILL_M and m != t:
                continue
            target = record_target(by_m[t], within)
            if target == NATIVE:
                continue
            if runs and runs[-1][1] == m - 1 and runs[-1][2].tuned_m == t:
                runs[-1] = (runs[-1][0], m, runs[-1][2])
            else:
                runs.append((m, m, Route(target, configs[t], t, eager_worthwhile(by_m[t], within))))
        if runs:
            plan[group] = runs
    return plan


def route_counts(records: Iterable[Mapping[str, Any]], within: float = 1.0) -> dict[str, int]:
    """How many stored keys go where: the numbers the plugin's line reports."""
    counts = dict.fromkeys(TARGETS, 0)
    for r in records:
        if group_key(r) is not None:  # what _groups plans
            counts[record_target(r, within)] += 1
    return counts


def build_table(plan: Mapping[tuple, list], dtype_of: Callable[[str], Any] = lambda d: d) -> dict:
    """plan -> {(op, N, K, dtype_of(dtype), *rest): (sorted M_lo list, runs)} for bisect lookup."""
    return {(op, N, K, dtype_of(d), *rest): ([r[0] for r in runs], runs)
            for (op, N, K, d, *rest), runs in plan.items()}


def lookup(table: Mapping, op: str, M: int, N: int, K: int, dtype: Any, *rest: int) -> Route | None:
    """The route of a call of `op` (rest: bmm's batch and layout), or None."""
    entry = table.get((op, N, K, dtype, *rest))
    if entry is None:
        return None
    los, runs = entry
    i = bisect.bisect_right(los, M) - 1
    if i >= 0 and runs[i][0] <= M <= runs[i][1]:
        return runs[i][2]
    return None


@dataclass
class Router:
    """An installed router; `hits` counts calls per target (what ran, not what was planned)."""

    plan: dict = field(default_factory=dict)
    libs: list = field(default_factory=list)
    hits: dict = field(default_factory=lambda: dict.fromkeys(TARGETS, 0))
    eager_native: int = 0  # calls of a routed key sent native because they ran outside a capture
    refused: int = 0  # calls tuner's own kernel refused as they were (TMA alignment, ...): native served them
    warming: bool = False  # warm-up: take every route, so its kernels compile before serving
    capturing: Callable[[], bool] = lambda: False  # torch.cuda.is_current_stream_capturing

    def applies(self, route: Route | None) -> Route | None:
        """The route where it applies in this place (see the module's "Per place"), else None."""
        if route is None or route.eager or self.warming or self.capturing():
            return route
        self.eager_native += 1
        return None

    @property
    def ops(self) -> list[str]:
        return sorted({op for op, *_ in self.plan})

    def uninstall(self) -> None:
        for lib in self.libs:
            _LIBS.remove(lib)
            lib._destroy()
        self.libs = []


@dataclass
class Targets:
    """The callables a route can end in, per op: FlagGems' function and tuner's kernels."""

    flaggems_mm: Callable | None = None  # (a, b, out=None)
    flaggems_addmm: Callable | None = None  # (bias, a, b, beta, alpha, out=None)
    splitk_mm: Callable | None = None  # (a, b, config, out=None, bias=None)
    # (a, b, config, out=None, bias=None); raise `unsupported` (a ValueError) for tensors TMA
    # cannot read as they are, which then go native
    persistent_mm: Callable | None = None
    streamk_mm: Callable | None = None
    flaggems_bmm: Callable | None = None  # (a, b, out=None)
    persistent_bmm: Callable | None = None  # (a, b, config, out=None); raises `unsupported` likewise
    unsupported: type[Exception] = ValueError

    def own(self, r: Route | None, a, b, out=None, bias=None):
        """The callable running route `r` on these tensors with tuner's kernels, or None."""
        if r is None:
            return None
        if r.target == SPLITK and self.splitk_mm is not None:
            return lambda: self.splitk_mm(a, b, r.config, out=out, bias=bias)
        if r.target == PERSISTENT and self.persistent_mm is not None:
            return lambda: self.persistent_mm(a, b, r.config, out=out, bias=bias)
        if r.target == STREAMK and self.streamk_mm is not None:
            return lambda: self.streamk_mm(a, b, r.config, out=out, bias=bias)
        return None


def _exact_out(out, a, b) -> bool:
    """An `out=` buffer a route can write as is: (M, N), contiguous rows, the inputs' dtype."""
    return (a.dim() == 2 and b.dim() == 2 and tuple(out.shape) == (a.shape[0], b.shape[1])
            and out.dtype == a.dtype and out.stride(1) == 1)


def _serve(router: Router, t: Targets, route: tuple[str, Callable] | None):
    """Run a route's (target, call) and count it; None when there is no route, or when tuner's own
    kernel refused the tensors as they are (TMA alignment: `t.unsupported`) and native serves them."""
    if route is None:
        return None
    target, call = route
    try:
        res = call()
    except t.unsupported as e:
        if target not in OWN:
            raise
        if not router.refused:  # said once; the exit line counts them all
            logger.warning("tuner router: %s; native serves it and every call refused after it", e)
        router.refused += 1
        return None
    router.hits[target] += 1
    return res


def _mm_kernels(table: Mapping, t: Targets, router: Router, native: Mapping[str, Any]):
    def routed(a, b, out=None) -> tuple[str, Callable] | None:
        """(target, the call serving this mm by its route), or None (native)."""
        # only exact output buffers (what Inductor passes): ATen resizes others, the routes would not
        if out is not None and not _exact_out(out, a, b):
            return None
        if not (a.dim() == 2 and b.dim() == 2 and a.dtype == b.dtype):
            return None
        r = router.applies(lookup(table, "mm", a.shape[0], b.shape[1], a.shape[1], a.dtype))
        own = t.own(r, a, b, out=out)
        if own is not None:
            return r.target, own
        if r is not None and r.target == FLAGGEMS and t.flaggems_mm is not None:
            return FLAGGEMS, lambda: t.flaggems_mm(a, b, out=out)
        return None

    return _a_b_overloads("mm", routed, t, router, native)


def _a_b_overloads(op: str, routed: Callable, t: Targets, router: Router, native: Mapping[str, Any]) -> dict:
    """The kernels of an op taking (a, b) and its .out overload (mm, bmm): the route `routed`
    gives, else the native kernel."""
    def plain(keyset, a, b):
        return with_out(keyset, a, b, out=None)

    def with_out(keyset, a, b, *, out):
        res = _serve(router, t, routed(a, b, out))
        if res is not None:
            return res
        router.hits[NATIVE] += 1
        if out is None:
            return native[op].call_boxed(keyset, a, b)
        return native[f"{op}.out"].call_boxed(keyset, a, b, out=out)

    return {op: plain, f"{op}.out": with_out}


def _addmm_kernels(table: Mapping, t: Targets, router: Router, native: Mapping[str, Any]):
    def routed(bias, a, b, beta, alpha, out=None) -> tuple[str, Callable] | None:
        """(target, the call serving this addmm by its route), or None (native)."""
        if out is not None and not _exact_out(out, a, b):
            return None
        if not (a.dim() == 2 and b.dim() == 2 and bias.dim() == 1 and a.dtype == b.dtype == bias.dtype):
            return None
        r = router.applies(lookup(table, "addmm", a.shape[0], b.shape[1], a.shape[1], a.dtype))
        if r is None:
            return None
        if r.target == FLAGGEMS and t.flaggems_addmm:
            return FLAGGEMS, lambda: t.flaggems_addmm(bias, a, b, beta=beta, alpha=alpha, out=out)
        # tuner's kernels add the bias as nn.Linear does: beta = alpha = 1 only
        own = t.own(r, a, b, out=out, bias=bias) if beta == 1 and alpha == 1 else None
        return (r.target, own) if own is not None else None

    def addmm(keyset, bias, a, b, *, beta=1, alpha=1):
        return addmm_out(keyset, bias, a, b, beta=beta, alpha=alpha, out=None)

    def addmm_out(keyset, bias, a, b, *, beta=1, alpha=1, out):
        res = _serve(router, t, routed(bias, a, b, beta, alpha, out))
        if res is not None:
            return res
        router.hits[NATIVE] += 1
        if out is None:
            return native["addmm"].call_boxed(keyset, bias, a, b, beta=beta, alpha=alpha)
        return native["addmm.out"].call_boxed(keyset, bias, a, b, beta=beta, alpha=alpha, out=out)

    return {"addmm": addmm, "addmm.out": addmm_out}


def bmm_layout(b) -> int:
    """kernels/bmm.py's LAYOUT of a call: 1 when one weight serves every batch (F.linear on a
    sequence-first input: B expanded, batch stride 0), else 0."""
    return int(b.stride(0) == 0)


def _bmm_kernels(table: Mapping, t: Targets, router: Router, native: Mapping[str, Any]):
    def routed(a, b, out=None) -> tuple[str, Callable] | None:
        """(target, the call serving this bmm by its route), or None (native)."""
        if not (a.dim() == 3 and b.dim() == 3 and a.dtype == b.dtype and a.shape[0] == b.shape[0]):
            return None
        batch, M, K = a.shape
        N = b.shape[2]
        if out is not None and (tuple(out.shape) != (batch, M, N) or out.dtype != a.dtype or not out.is_contiguous()):
            return None
        r = router.applies(lookup(table, "bmm", M, N, K, a.dtype, batch, bmm_layout(b)))
        if r is None:
            return None
        if r.target == PERSISTENT and t.persistent_bmm is not None:
            return PERSISTENT, lambda: t.persistent_bmm(a, b, r.config, out=out)
        if r.target == FLAGGEMS and t.flaggems_bmm is not None:
            return FLAGGEMS, lambda: t.flaggems_bmm(a, b, out=out)
        return None

    return _a_b_overloads("bmm", routed, t, router, native)


def install_router(plan: Mapping[tuple, list], targets: Targets, *, dispatch_key: str = "CUDA",
                   capturing: Callable[[], bool] | None = None) -> Router:
    """Register the routing kernels for every op the plan sends anywhere but native (none: no-op).

    The kernels registered before (ATen's, as long as FlagGems did not register these overloads:
    the plugin leaves them out of `flag_gems.enable`) are captured first and are the native route.
    `capturing` says whether a CUDA graph is being captured (default: torch's own check).
    """
    import torch

    from tuner.devices import torch_dtype

    router = Router(dict(plan), capturing=capturing or torch.cuda.is_current_stream_capturing)
    if not plan:
        return router
    table = build_table(plan, torch_dtype)
    ops = {op for op, *_ in plan}
    kernels: dict[str, Callable] = {}
    overloads = [o for op in ops for o in (op, f"{op}.out")]
    native = {o: torch.library.get_kernel(f"aten::{o}", dispatch_key) for o in overloads}
    if "mm" in ops:
        kernels.update(_mm_kernels(table, targets, router, native))
    if "addmm" in ops:
        kernels.update(_addmm_kernels(table, targets, router, native))
    if "bmm" in ops:
        kernels.update(_bmm_kernels(table, targets, router, native))
    lib = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():  # "Overriding a previously registered kernel" is the point
        warnings.simplefilter("ignore", UserWarning)
        for name, fn in kernels.items():
            lib.impl(name, fn, dispatch_key, with_keyset=True)
    _LIBS.append(lib)
    router.libs.append(lib)
    logger.debug("GEMM router on %s for %d (op, N, K, dtype)", ", ".join(sorted(kernels)), len(plan))
    return router


# ---- serving: the plugin's injector ------------------------------------------------------------

_installed: Router | None = None  # the router of this process (vLLM may call the plugin twice)


def router_claims(records: list[dict[str, Any]], ctx: Context) -> list[str]:
    """The FlagGems functions that must not register while the router owns their aten ops (torch
    takes one Python kernel per op and dispatch key): both overloads of each routed op."""
    ops = {op for op, *_ in plan_routes(records, ctx.max_tokens, ctx.route_within)}
    return [name for op in sorted(ops) for name in (op, f"{op}_out")]


def flaggems_targets() -> Targets:
    """FlagGems' own mm / addmm / bmm functions (their LibTuner caches seeded by the FlagGems stage)
    and tuner's split-K, persistent (also batched) and stream-K GEMMs: what a route ends in."""
    from kernels.addmm import flag_gems_addmm_module
    from kernels.flaggems_ops import op_module
    from kernels.mm import flag_gems_mm_module
    from kernels.persistent_bmm import persistent_bmm
    from kernels.persistent_mm import Unsupported, persistent_mm
    from kernels.streamk_mm import streamk_mm
    from kernels.triton_mm import splitk_mm

    fg_mm, fg_addmm = flag_gems_mm_module(), flag_gems_addmm_module()

    def mm(a, b, out=None):
        return fg_mm.mm(a, b) if out is None else fg_mm.mm_out(a, b, out=out)

    def addmm(bias, a, b, *, beta=1, alpha=1, out=None):
        if out is None:
            return fg_addmm.addmm(bias, a, b, beta=beta, alpha=alpha)
        return fg_addmm.addmm_out(bias, a, b, beta=beta, alpha=alpha, out=out)

    fg_bmm = op_module("bmm")

    def bmm(a, b, out=None):
        return fg_bmm.bmm(a, b) if out is None else fg_bmm.bmm_out(a, b, out)

    return Targets(flaggems_mm=mm, flaggems_addmm=addmm, splitk_mm=splitk_mm, persistent_mm=persistent_mm,
                   streamk_mm=streamk_mm, flaggems_bmm=bmm, persistent_bmm=persistent_bmm, unsupported=Unsupported)


def warm_up_ms(lo: int, hi: int) -> list[int]:
    """One M of each class Triton compiles separately within [lo, hi]: M == 1, M a multiple of 16,
    any other M (H200: 18 M values with one config gave exactly these 3 compilations)."""
    ms = {m for m in (1,) if lo <= m <= hi}
    sixteen = next((m for m in range(max(lo, 16), hi + 1) if m % 16 == 0), None)
    other = next((m for m in range(max(lo, 2), hi + 1) if m % 16), None)
    return sorted(ms | {m for m in (sixteen, other) if m is not None})


def warm_up(plan: Mapping[tuple, list]) -> int:
    """Run every routed group (op, N, K, dtype[, batch, layout]) once per M class and overload
    through the dispatcher, so the Triton kernels are compiled before the engine takes requests
    (vLLM's JIT monitor flagged mm_kernel_general_host_tma compilations during serving). Returns
    the calls made."""
    import torch

    from tuner.devices import torch_dtype

    calls = 0
    for (op, N, K, dtype, *rest), runs in plan.items():
        if op == "bmm":
            calls += _warm_up_bmm(N, K, dtype, *rest, runs)
            continue
        dt = torch_dtype(dtype)
        w = torch.randn(N, K, device="cuda", dtype=dt)
        bias = torch.randn(N, device="cuda", dtype=dt)
        for lo, hi, _ in runs:
            for m in warm_up_ms(lo, hi):
                a = torch.randn(m, K, device="cuda", dtype=dt)
                out = torch.empty(m, N, device="cuda", dtype=dt)
                if op == "mm":
                    torch.mm(a, w.t()), torch.mm(a, w.t(), out=out)
                else:
                    torch.addmm(bias, a, w.t()), torch.addmm(bias, a, w.t(), out=out)
                calls += 2
        del w, bias
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return calls


def _warm_up_bmm(N: int, K: int, dtype: str, batch: int, layout: int, runs: list) -> int:
    """warm_up for one bmm group: its key's operands in its layout (kernels/bmm.py makes them)."""
    import torch

    from kernels import get_kernel

    bmm, calls = get_kernel("bmm"), 0
    for lo, hi, _ in runs:
        for m in warm_up_ms(lo, hi):
            inputs = bmm.make_inputs((batch, m, N, K, layout), dtype, "cuda", 1, seed=0)
            (a, b), out = inputs.sets[0], inputs.outs[0]
            torch.bmm(a, b), torch.bmm(a, b, out=out)
            calls += 2
            del inputs, a, b, out
    return calls


def check_own_kernels(records: Iterable[Mapping[str, Any]], allow_foreign: bool, within: float = 1.0) -> None:
    """Refuse a record routed to tuner's own kernels (split-K, persistent, stream-K) whose kernel source hash
    is not the running kernel's: its timings belong to other code (re-tune, or allow_foreign). The
    FlagGems routes' configs are checked where their caches are seeded."""
    from kernels import get_kernel

    from tuner.inject.foreign import check_records

    own = [r for r in records if r.get("kernel") in ROUTED_OPS and record_target(r, within) in OWN]
    check_records(own, running={}, allow_foreign=allow_foreign,
                  running_for=lambda r: {"kernel_source_hash": get_kernel(r["kernel"]).source_hash(r["config"])})


@injector("gemm_routes", label="GEMM keys routed to a tuned kernel", stage=OVERRIDE, claims=router_claims)
def install_routes_for_serving(records: list[dict[str, Any]], ctx: Context) -> int:
    """Install the router for the stored mm / addmm records and compile what it routes to."""
    global _installed
    check_own_kernels(records, ctx.allow_foreign, ctx.route_within)
    plan = plan_routes(records, ctx.max_tokens, ctx.route_within)
    counts = route_counts(records, ctx.route_within)
    if not plan:
        return 0
    import torch

    if not torch.cuda.is_available():
        ctx.log.warning("GEMM routes not installed: no CUDA GPU in this process")
        return 0
    if _installed is None:
        _installed = install_router(plan, flaggems_targets())
        _installed.warming = True
        try:
            ctx.log.debug("GEMM router warm-up: %d calls", warm_up(plan))
        except Exception as e:  # e.g. out of memory: the routes still serve, compiling on first use
            ctx.log.warning("GEMM router warm-up failed (%s: %s); routed kernels compile on first use",
                            type(e).__name__, e)
        finally:
            _installed.warming = False
        _installed.hits.update(dict.fromkeys(TARGETS, 0))  # count serving calls only
        _installed.eager_native = _installed.refused = 0
        import atexit

        atexit.register(lambda: ctx.log.info("%s", hits_line(_installed)))
    return sum(counts.values()) - counts[NATIVE]


def counts_text(counts: Mapping[str, int], skip_zero: tuple[str, ...] = ()) -> str:
    """'FlagGems 9, split-K 4, persistent 14, stream-K 1, native 20' (TARGET_NAMES' order); the targets
    in skip_zero are left out where their count is 0."""
    return ", ".join(f"{name} {counts.get(t, 0)}" for t, name in TARGET_NAMES.items()
                     if counts.get(t, 0) or t not in skip_zero)


def hits_line(router: Router) -> str:
    """What the router ran, said when the engine process exits: the check that what the plugin
    reported as routed is what served (calls captured into a CUDA graph count once, at capture)."""
    return (f"tuner router: GEMM calls dispatched since start: {counts_text(router.hits)} (of which routed keys "
            f"kept native on the eager path: {router.eager_native}, refused by tuner's kernel: {router.refused})")

