"""Seed FlagGems' LibTuner cache for bmm so it never autotunes at serve time.

FlagGems 5.0.x runs one bmm kernel on NVIDIA GPUs (`flag_gems/ops/bmm.py` `bmm_kernel`): a
LibTuner over the yaml list `bmm` (12 configs, no pre_hook), key M, N, K (log2 strategy) and
stride_am, stride_bk (align32), then str(dtype) of A, B and out. The batch is not in the key but
the layout is, through the strides: a record of kernels/bmm.py's `linear` layout (the resampler's
F.linear on a sequence-first input) has stride_am = BATCH * K, so it serves that BATCH only.
Rows are written with flaggems_cache's helpers through FlagGems' own `get_key`.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tuner.devices import torch_dtype
from tuner.inject._libtuner_seed import locate_libtuner, seed_kernel_records
from tuner.inject.flaggems_cache import SeedReport
from tuner.inject.registry import FLAGGEMS, Context, injector

KERNEL = "bmm"
CONFIG_META = ("TILE_M", "TILE_N", "TILE_K", "GROUP_M")


def locate_bmm_tuner():
    """The LibTuner of FlagGems' bmm_kernel in the loaded `flag_gems.ops.bmm`."""
    from kernels.bmm import flag_gems_bmm_module

    return locate_libtuner(flag_gems_bmm_module, "bmm_kernel")


def bmm_source_hash() -> str:
    """The `kernel_source_hash` a bmm record carries (kernels/bmm.py stores it)."""
    from kernels.bmm import VARIANT, BMM

    return BMM().source_hash({"variant": VARIANT})


def runtime_args(tuner, batch: int, M: int, N: int, K: int, layout: int, dtype: str) -> dict:
    """The argument dict LibTuner.run builds for FlagGems' bmm on operands of this layout."""
    import torch

    from kernels.bmm import operand_strides

    tdt = torch_dtype(dtype)
    sa, sb = operand_strides((batch, M, N, K, layout))
    a = torch.empty_strided((batch, M, K), sa, dtype=tdt, device="meta")
    b = torch.empty_strided((batch, K, N), sb, dtype=tdt, device="meta")
    out = torch.empty((batch, M, N), dtype=tdt, device="meta")
    values = (a, b, out, M, N, K, *a.stride(), *b.stride(), *out.stride())
    return dict(zip(tuner.arg_names, values))


def bmm_key(tuner, batch: int, N: int, K: int, layout: int, dtype: str, M: int) -> tuple:
    """The LibTuner cache key FlagGems computes for this bmm call."""
    return tuner.get_key(runtime_args(tuner, batch, M, N, K, layout, dtype))


def _group(recs: list[Mapping[str, Any]], report: SeedReport) -> dict[tuple, dict[int, Mapping]]:
    """(BATCH, N, K, LAYOUT, dtype) -> {M: record}, BATCH 0 for the contiguous layout, whose key
    does not depend on it: of two such records of one M the larger batch (more work) wins."""
    groups: dict[tuple, dict[int, Mapping]] = {}
    for r in sorted(recs, key=lambda r: -int(r["key"]["BATCH"])):
        k = r["key"]
        layout = int(k["LAYOUT"])
        batch = int(k["BATCH"]) if layout else 0
        g = groups.setdefault((batch, int(k["N"]), int(k["K"]), layout, r["dtype"]), {})
        prev = g.get(int(k["M"]))
        if prev is None:
            g[int(k["M"])] = r
        elif int(prev["key"]["BATCH"]) != int(k["BATCH"]):
            report.skipped.append(f"bmm {dict(k)} {r['dtype']}: shadowed by the BATCH={prev['key']['BATCH']} "
                                  "record (FlagGems' key has no batch)")
        elif prev["config"] != r["config"]:
            raise ValueError(f"two different bmm configs for {dict(k)} {r['dtype']}")
    return groups


def _describe(group: tuple) -> str:
    batch, N, K, layout, dtype = group
    from kernels.bmm import LAYOUT_NAMES

    return f"bmm N={N} K={K} {LAYOUT_NAMES.get(layout, layout)}" + (f" BATCH={batch}" if layout else "") + f" {dtype}"


def seed_bmm_cache(
    records: Iterable[Mapping[str, Any]],
    *,
    max_tokens: int = 8192,
    db_url: str | None = None,
    allow_foreign: bool = False,
    running: Mapping[str, Any] | None = None,
) -> SeedReport:
    """Seed FlagGems' bmm LibTuner cache from fg_bmm records.

    Every M in 1..max_tokens gets the config of the nearest tuned M (log space, per log2 bucket)
    of the same N, K, layout (and BATCH for the linear layout) and dtype. db_url=None writes into
    the running FlagGems' cache database; a db_url writes there for another process.
    """
    from kernels.bmm import VARIANT

    return seed_kernel_records(
        records, kernel=KERNEL, variant=VARIANT, locate=locate_bmm_tuner, source_hash=bmm_source_hash,
        group=_group, what=_describe, key_of=lambda t, g, m: bmm_key(t, g[0] or 1, g[1], g[2], g[3], g[4], m),
        meta_keys=CONFIG_META, max_tokens=max_tokens, db_url=db_url, allow_foreign=allow_foreign,
        running=running)


@injector("bmm_flaggems", label="bmm via FlagGems cache", stage=FLAGGEMS)
def seed_bmm_for_serving(records: list[dict[str, Any]], ctx: Context) -> int:
    return seed_bmm_cache(records, max_tokens=ctx.max_tokens, allow_foreign=ctx.allow_foreign).records
