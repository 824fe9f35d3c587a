"""Seed FlagGems' LibTuner cache for addmm (nn.Linear with a bias) so it never autotunes at serve time.

FlagGems 5.0.x runs one addmm kernel on NVIDIA GPUs (`flag_gems/ops/addmm.py` `addmm_kernel`,
no Hopper module): a LibTuner over the yaml list `addmm` (8 configs, no pre_hook), key M, N, K
with the align32 strategy, then str(dtype) of its four tensors (A, B, bias, out). Its cache is
the same SQL ConfigCache as mm's, so rows are written with flaggems_cache's helpers, through
FlagGems' own `get_key` and `config_table_name`; the key carries no strides, so one row serves
both weight layouts.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from tuner.inject._select import plan_buckets
from tuner.inject.flaggems_cache import (
    _TORCH_DTYPES,
    SeedReport,
    UnsupportedFlagGemsError,
    _check_version,
    _same,
    _write_rows,
)
from tuner.inject.foreign import ENV_FIELDS, check_records, running_environment

logger = logging.getLogger(__name__)

KERNEL = "addmm"


def locate_addmm_tuner():
    """The LibTuner of FlagGems' addmm_kernel in the loaded `flag_gems.ops.addmm`."""
    _check_version()
    from flag_gems.utils.libentry import LibEntry

    from kernels.addmm import flag_gems_addmm_module, libtuner

    entry = getattr(flag_gems_addmm_module(), "addmm_kernel", None)
    if not isinstance(entry, LibEntry):
        raise UnsupportedFlagGemsError("FlagGems' addmm_kernel is not a LibEntry-wrapped LibTuner")
    tuner = libtuner(entry)
    for attr in ("get_key", "config_table_name", "cache", "configs", "arg_names"):
        if not hasattr(tuner, attr):
            raise UnsupportedFlagGemsError(f"addmm_kernel's LibTuner has no {attr!r}")
    return tuner


def addmm_source_hash() -> str:
    """The `kernel_source_hash` an addmm record carries (kernels/addmm.py stores it)."""
    from kernels.addmm import VARIANT, AddMM

    return AddMM().source_hash({"variant": VARIANT})


def runtime_args(tuner, M: int, N: int, K: int, dtype: str) -> dict:
    """The argument dict LibTuner.run builds for FlagGems' addmm(bias[N], A, W.t())."""
    import torch

    tdt = getattr(torch, _TORCH_DTYPES[dtype])
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


def triton_config(cfg: Mapping[str, Any], pre_hook=None):
    import triton

    return triton.Config({k: int(cfg[k]) for k in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K")},
                         num_warps=int(cfg["num_warps"]), num_stages=int(cfg["num_stages"]),
                         pre_hook=pre_hook)


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
    from flag_gems.utils.models import SQLPersistantModel

    from kernels.addmm import VARIANT

    recs = [r for r in records if r.get("kernel") == KERNEL
            and (r.get("config") or {}).get("variant") == VARIANT]
    if not recs:  # nothing to seed: do not depend on FlagGems' addmm internals at all
        return SeedReport()
    tuner = locate_addmm_tuner()
    base = dict(running if running is not None else running_environment(ENV_FIELDS))
    expected = {"kernel_source_hash": addmm_source_hash()}
    check_records(recs, base, allow_foreign=allow_foreign, running_for=lambda r: expected)
    report = SeedReport()
    hook = next((c.pre_hook for c in tuner.configs if c.pre_hook is not None), None)
    rows: dict[tuple, Any] = {}
    for (N, K, dtype), by_m in sorted(_group(recs, report).items()):
        where = f"addmm N={N} K={K} {dtype}"
        if dtype not in _TORCH_DTYPES:
            report.skipped.append(f"{where}: dtype not supported")
            continue
        cfgs = {}
        for m, r in sorted(by_m.items()):
            cfg = triton_config(r["config"], hook)
            listed = next((c for c in tuner.configs if _same(c, cfg)), None)
            if listed is None and hook is not None:
                if db_url is not None:
                    report.skipped.append(f"{where} M={m}: off-list config needs this process's pre_hook")
                    continue
                tuner.configs.append(cfg)  # kernel_hash is cached: the table name is unchanged
                report.appended_configs += 1
            cfgs[m] = listed or cfg
        if not cfgs:
            continue
        key_of = functools.partial(addmm_key, tuner, N, K, dtype)
        for key, m in plan_buckets(sorted(cfgs), max_tokens, key_of).items():
            rows[key] = cfgs[m]
        report.records += len(cfgs)
    if rows:
        model = tuner.cache.model if db_url is None else SQLPersistantModel(db_url)
        report.rows[_write_rows(model, tuner.config_table_name, rows)] = len(rows)
    for s in report.skipped:
        logger.warning("not seeded: %s", s)
    return report
