"""Seed FlagGems' LibTuner cache for addmm (nn.Linear with a bias) so it never autotunes at serve time.

FlagGems 5.0.x runs one addmm kernel on NVIDIA GPUs (`flag_gems/ops/addmm.py` `addmm_kernel`,
no Hopper module): a LibTuner over the yaml list `addmm` (8 configs, no pre_hook), key M, N, K
with the align32 strategy, then str(dtype) of its four tensors (A, B, bias, out). Its cache is
the same SQL ConfigCache as mm's, so rows are written with flaggems_cache's helpers, through
FlagGems' own `get_key` and `config_table_name`; the key carries no strides, so one row serves
both weight layouts.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tuner.devices import torch_dtype
from tuner.inject._libtuner_seed import locate_libtuner, seed_kernel_records
from tuner.inject.flaggems_cache import SeedReport
from tuner.inject.registry import FLAGGEMS, Context, injector

KERNEL = "addmm"
CONFIG_META = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K")


def locate_addmm_tuner():
    """The LibTuner of FlagGems' addmm_kernel in the loaded `flag_gems.ops.addmm`."""
    from kernels.addmm import flag_gems_addmm_module

    return locate_libtuner(flag_gems_addmm_module, "addmm_kernel")


def addmm_source_hash() -> str:
    """The `kernel_source_hash` an addmm record carries (kernels/addmm.py stores it)."""
    from kernels.addmm import VARIANT, AddMM

    return AddMM().source_hash({"variant": VARIANT})


def runtime_args(tuner, M: int, N: int, K: int, dtype: str) -> dict:
    """The argument dict LibTuner.run builds for FlagGems' addmm(bias[N], A, W.t())."""
    import torch

    tdt = torch_dtype(dtype)
    a = torch.empty((M, K), dtype=tdt, device="meta")
    b = torch.empty((N, K), dtype=tdt, device="meta").t()
    out = torch.empty((M, N), dtype=tdt, device="meta")
    bias = torch.empty((N,), dtype=tdt, device="meta").broadcast_to(out.shape)
    values = (a, b, bias, out, 1, 1, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
              bias.stride(0), bias.stride(1), out.stride(0), out.stride(1))
    return dict(zip(tuner.arg_names, values))


def addmm_key(tuner, N: int, K: int, dtype: str, M: int) -> tuple:
    """The LibTuner cache key FlagGems computes for this addmm call."""
    return tuner.get_key(runtime_args(tuner, M, N, K, dtype))


def _group(recs: list[Mapping[str, Any]], report: SeedReport) -> dict[tuple, dict[int, Mapping]]:
    """(N, K, dtype) -> {M: record}. The cache key has no layout: a BT=1 record (nn.Linear's
    weight, what serving meets) wins over a BT=0 one of the same M."""
    groups: dict[tuple, dict[int, Mapping]] = {}
    for r in sorted(recs, key=lambda r: -int(r["key"].get("BT", 1))):
        k = r["key"]
        g = groups.setdefault((int(k["N"]), int(k["K"]), r["dtype"]), {})
        prev = g.get(int(k["M"]))
        if prev is None:
            g[int(k["M"])] = r
        elif int(prev["key"].get("BT", 1)) != int(k.get("BT", 1)):
            report.skipped.append(f"addmm {dict(k)} {r['dtype']}: BT=0 shadowed by the BT=1 record")
        elif prev["config"] != r["config"]:
            raise ValueError(f"two different addmm configs for {dict(k)} {r['dtype']}")
    return groups


def seed_addmm_cache(
    records: Iterable[Mapping[str, Any]],
    *,
    max_tokens: int = 8192,
    db_url: str | None = None,
    allow_foreign: bool = False,
    running: Mapping[str, Any] | None = None,
) -> SeedReport:
    """Seed FlagGems' addmm LibTuner cache from fg_addmm records.

    Every M in 1..max_tokens gets the config of the nearest tuned M (log space, per align32
    bucket, as for mm) of the same N, K, dtype. db_url=None writes into the running FlagGems'
    own cache database; a db_url writes there for another process (FLAGGEMS_DB_URL). FlagGems'
    addmm configs carry no pre_hook, so an off-list config runs the same from a row in any
    process; should a later list carry one, off-list configs get it appended in this process
    and are skipped for another, as for mm.
    """
    from kernels.addmm import VARIANT

    return seed_kernel_records(
        records, kernel=KERNEL, variant=VARIANT, locate=locate_addmm_tuner, source_hash=addmm_source_hash,
        group=_group, what=lambda g: f"addmm N={g[0]} K={g[1]} {g[2]}",
        key_of=lambda t, g, m: addmm_key(t, g[0], g[1], g[2], m), meta_keys=CONFIG_META,
        max_tokens=max_tokens, db_url=db_url, allow_foreign=allow_foreign, running=running)


@injector("addmm_flaggems", label="addmm via FlagGems cache", stage=FLAGGEMS)
def seed_addmm_for_serving(records: list[dict[str, Any]], ctx: Context) -> int:
    return seed_addmm_cache(records, max_tokens=ctx.max_tokens, allow_foreign=ctx.allow_foreign).records
