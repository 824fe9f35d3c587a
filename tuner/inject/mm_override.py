"""Route the (M, N, K, dtype) whose tuned winner is the project's split-K GEMM to it.

FlagGems' Hopper mm has no split-K, so such a winner cannot go through its cache: an
`aten::mm` kernel is registered for the CUDA dispatch key that calls
`kernels.triton_mm.splitk_mm` for the covered shapes and the kernel it replaced
(FlagGems' mm when FlagGems is enabled, else ATen's cuBLAS mm) for everything else,
taken with `torch.library.get_kernel` before registering.
"""
from __future__ import annotations

import bisect
import logging
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tuner.devices import torch_dtype
from tuner.inject._select import assign_ms, ranges
from tuner.inject.registry import OVERRIDE, Context, injector

logger = logging.getLogger(__name__)
_LIBS: list[Any] = []  # a torch.library.Library deregisters its kernels when collected


def splitk_plan(
    records: Iterable[Mapping[str, Any]], max_tokens: int = 8192
) -> dict[tuple[int, int, str], list[tuple[int, int, dict]]]:
    """(N, K, dtype) -> [(M_lo, M_hi, splitk config)] for the runtime M that go to split-K.

    Each M in 1..max_tokens follows the tuned M nearest in log space among all mm
    records of its (N, K, dtype), whatever their variant; the M whose nearest record
    is a split-K winner are covered, the rest stays with FlagGems/cuBLAS.
    """
    groups: dict[tuple[int, int, str], dict[int, Mapping]] = {}
    for r in records:
        if r.get("kernel") != "mm":
            continue
        k = r["key"]
        g = groups.setdefault((int(k["N"]), int(k["K"]), r["dtype"]), {})
        m = int(k["M"])
        if m in g and g[m]["config"] != r["config"]:
            raise ValueError(f"two different mm winners for {k} {r['dtype']}")
        g[m] = r
    plan = {}
    for nkd, by_m in sorted(groups.items()):
        split = [m for m, r in by_m.items() if r["config"].get("variant") == "splitk"]
        if not split:
            continue
        runs = ranges(assign_ms(sorted(by_m), max_tokens), split)
        plan[nkd] = [(lo, hi, dict(by_m[t]["config"])) for lo, hi, t in runs]
    return plan


@dataclass
class MmOverride:
    """An installed override (or none); `uninstall()` removes it."""

    plan: dict = field(default_factory=dict)
    lib: Any = None

    def uninstall(self) -> None:
        if self.lib is not None:
            _LIBS.remove(self.lib)
            self.lib._destroy()
            self.lib = None

    @property
    def active(self) -> int:
        return sum(len(v) for v in self.plan.values()) if self.lib is not None else 0


def lookup(table: dict, M: int, N: int, K: int, dtype: Any) -> dict | None:
    """The split-K config covering (M, N, K, dtype) in a table built from a plan, or None."""
    entry = table.get((N, K, dtype))
    if entry is None:
        return None
    los, runs = entry
    i = bisect.bisect_right(los, M) - 1
    if i >= 0 and runs[i][0] <= M <= runs[i][1]:
        return runs[i][2]
    return None


def build_table(plan: Mapping, dtype_of=lambda d: d) -> dict:
    """plan -> {(N, K, dtype_of(dtype)): (sorted M_lo list, runs)} for bisect lookup."""
    return {(N, K, dtype_of(d)): ([r[0] for r in runs], runs) for (N, K, d), runs in plan.items()}


def install_mm_overrides(
    records: Iterable[Mapping[str, Any]],
    *,
    max_tokens: int = 8192,
    dispatch_key: str = "CUDA",
    splitk_mm: Callable | None = None,
    fallback: Callable | None = None,
) -> MmOverride:
    """Register the aten::mm override for split-K winners; a no-op if there are none.

    `splitk_mm(a, b, config)` defaults to `kernels.triton_mm.splitk_mm`; `dispatch_key`
    exists so the routing can be exercised on CPU. The CUDA override needs a GPU.
    Keys no split-K winner covers go to `fallback(a, b)` when given (FlagGems' own mm, whose
    aten registration must then be left out: torch allows one Python kernel per op and key),
    else to the kernel registered before (captured at install time).
    """
    plan = splitk_plan(records, max_tokens)
    if not plan:
        return MmOverride(plan)
    import torch

    if dispatch_key == "CUDA" and not torch.cuda.is_available():
        raise RuntimeError("split-K mm overrides need a CUDA GPU, and none is visible.")
    if splitk_mm is None:
        from kernels.triton_mm import splitk_mm  # imported lazily: only GPU hosts run it

    table = build_table(plan, torch_dtype)
    previous = torch.library.get_kernel("aten::mm", dispatch_key)

    def mm_override(keyset, a, b):
        if a.dim() == 2 and b.dim() == 2 and a.dtype == b.dtype:
            cfg = lookup(table, a.shape[0], b.shape[1], a.shape[1], a.dtype)
            if cfg is not None:
                return splitk_mm(a, b, cfg)
        if fallback is not None:
            return fallback(a, b)
        return previous.call_boxed(keyset, a, b)

    lib = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():  # "Overriding a previously registered kernel" is the point
        warnings.simplefilter("ignore", UserWarning)
        lib.impl("mm", mm_override, dispatch_key, with_keyset=True)
    _LIBS.append(lib)
    logger.debug("aten::mm split-K override for %d (N, K, dtype)", len(plan))
    return MmOverride(plan, lib)


def splitk_claims(records: list[dict[str, Any]], ctx: Context) -> list[str]:
    """Split-K winners take aten::mm over and hand every other key to FlagGems' mm; torch allows
    one Python kernel per op and dispatch key, so FlagGems must not register mm too."""
    return ["mm"] if splitk_plan(records, ctx.max_tokens) else []


@injector("mm_splitk", label="mm split-K", stage=OVERRIDE, claims=splitk_claims)
def install_splitk_for_serving(records: list[dict[str, Any]], ctx: Context) -> int:
    if not splitk_plan(records, ctx.max_tokens):
        return 0
    import torch

    if not torch.cuda.is_available():
        ctx.log.warning("split-K mm winners not installed: no CUDA GPU in this process")
        return 0
    fallback = None
    if ctx.enable_flaggems and "mm" not in ctx.exclude:
        from kernels.mm import flag_gems_mm_module

        fallback = flag_gems_mm_module().mm  # seeded in the FlagGems stage: no autotuning
    if install_mm_overrides(records, max_tokens=ctx.max_tokens, fallback=fallback).lib is None:
        return 0
    return sum(1 for r in records if r.get("kernel") == "mm" and r["config"].get("variant") == "splitk")
