"""Seed FlagGems' LibTuner cache with tuned mm configs so nothing autotunes at serve time.

How FlagGems 5.0.x keeps the cache (flag_gems/utils/libentry.py, utils/models/sql.py):
`LibTuner.cache` is a ConfigCache backed by SQL (no in-memory dict): logical table
`<kernel fn>_<kernel_hash>`, physical table `<logical>-<md5 of "key_0key_1...">`,
columns key_i (primary key) + the config's int/float/str kwargs. A present key is never
benchmarked. So both "in-process" and "on disk" seeding write rows; we go through
FlagGems' own objects (`get_key`, `config_table_name`, `SQLPersistantModel.get_sql_model`)
so every name is what the running FlagGems computes.

`kernel_hash` includes the config list, which depends on the machine (the Hopper TMA
list is filtered by the GPU's shared memory: 162 configs on an H100, 216 without a GPU),
so table names computed on a CPU host differ from the H100's: seed on the serving GPU.
"""
from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tuner.devices import DTYPE_ALIASES, torch_dtype
from tuner.inject._select import plan_buckets
from tuner.inject.foreign import ENV_FIELDS, check_records, running_environment
from tuner.inject.registry import FLAGGEMS, Context, injector

logger = logging.getLogger(__name__)

VARIANT_KERNELS = {"fg_tma": "mm_kernel_general_host_tma", "fg_general": "mm_kernel_general"}
SUPPORTED_FLAG_GEMS = ("5.0.",)  # layouts of LibTuner/ConfigCache this module knows
B_LAYOUTS = ("row", "col")  # B as a (K, N) row-major tensor, or weight.t() of a Linear
LAYOUT_BT = {"row": 0, "col": 1}  # the records' BT of each layout


class UnsupportedFlagGemsError(RuntimeError):
    """The installed FlagGems stores its cache in a way this module does not know."""


@dataclass
class SeedReport:
    """What a seeding call did; `records` counts records that now steer a kernel."""

    records: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # physical-ish table -> rows written
    appended_configs: int = 0
    skipped: list[str] = field(default_factory=list)


def flag_gems_version() -> str:
    from importlib.metadata import version

    return version("flag_gems")


def check_version() -> None:
    v = flag_gems_version()
    if not v.startswith(SUPPORTED_FLAG_GEMS):
        raise UnsupportedFlagGemsError(
            f"FlagGems {v} is not supported by the cache seeder (known: {SUPPORTED_FLAG_GEMS}); "
            "its LibTuner table naming must be re-read before seeding."
        )


def locate_mm_module():
    """The module whose mm FlagGems dispatches to (Hopper: loaded as `hopper.ops.mm`)."""
    from kernels.mm import flag_gems_mm_module

    mod = flag_gems_mm_module()
    from flag_gems.utils.libentry import LibEntry

    if not isinstance(getattr(mod, "mm_kernel_general_host_tma", None), LibEntry):
        raise UnsupportedFlagGemsError(
            "FlagGems' Hopper mm module (mm_kernel_general_host_tma) is not loaded; "
            "is this an sm_90 machine (or ARCH=sm_90 set)?"
        )
    return mod


def locate_mm_tuners() -> dict[str, Any]:
    """variant -> LibTuner (`LibEntry.fn`) of FlagGems' Hopper mm kernels."""
    check_version()
    mod = locate_mm_module()
    out = {}
    for variant, name in VARIANT_KERNELS.items():
        out[variant] = require_libtuner(getattr(mod, name).fn, name)
    return out


def require_libtuner(tuner, name: str, extra: tuple[str, ...] = ()):
    """`tuner` if it has what seeding uses (a FlagGems that changed it is refused, not
    half-seeded); `name` says which kernel in the error."""
    for attr in ("get_key", "config_table_name", "cache", "configs", *extra):
        if not hasattr(tuner, attr):
            raise UnsupportedFlagGemsError(f"{name}'s LibTuner has no {attr!r}")
    return tuner


def fg_kernel_source_hash(variant: str) -> str:
    """The `kernel_source_hash` an fg_* record carries: the one kernels/mm.py stores when the
    result is measured (sha256 of the FlagGems JIT function's source)."""
    from kernels.mm import MM

    return MM().source_hash({"variant": variant})


def _runtime_args(mod, variant: str, M: int, N: int, K: int, dtype: str, b_layout: str) -> dict:
    """The argument dict LibTuner.run builds for FlagGems' general_mm call (A row-major)."""
    import torch
    from triton.tools.tensor_descriptor import TensorDescriptor

    tdt = torch_dtype(dtype)
    a = torch.empty_strided((M, K), (K, 1), dtype=tdt, device="meta")
    b = (torch.empty_strided((K, N), (N, 1), dtype=tdt, device="meta") if b_layout == "row"
         else torch.empty_strided((K, N), (1, K), dtype=tdt, device="meta"))
    c = torch.empty_strided((M, N), (N, 1), dtype=tdt, device="meta")
    strides = {"stride_am": a.stride(0), "stride_ak": a.stride(1), "stride_bk": b.stride(0),
               "stride_bn": b.stride(1), "stride_cm": c.stride(0), "stride_cn": c.stride(1)}
    if variant == "fg_tma":
        b_row = b.stride(1) == 1
        def d(t):  # general_mm's descriptors, dummy block shape until the pre_hook
            return TensorDescriptor(t, t.shape, t.stride(), [1, 1])

        return {"a_desc": d(a), "b_desc": d(b) if b_row else d(b.T), "c_desc": d(c),
                "M": M, "N": N, "K": K, **strides, "GROUP_M": 8, "A_ROW_MAJOR": True,
                "B_ROW_MAJOR": b_row, "dtype": str(tdt).split(".")[-1]}
    return {"A": a, "B": b, "C": c, "M": M, "N": N, "K": K, **strides, "GROUP_M": 8}


def _key_of(tuner, mod, variant, N, K, dtype, layout, M):
    """The LibTuner cache key FlagGems computes for this mm call."""
    return tuner.get_key(_runtime_args(mod, variant, M, N, K, dtype, layout))


def reachable_variant(mod, N: int, K: int, dtype: str) -> str | None:
    """Which fg kernel FlagGems' Hopper mm calls for this shape (None: gemv, N == 1)."""
    import torch

    if N == 1:
        return None
    tdt = torch_dtype(dtype)
    a = torch.empty((1, K), dtype=tdt, device="meta")
    b = torch.empty((K, N), dtype=tdt, device="meta")
    return "fg_tma" if mod.is_tma_compatible(a, b, N, K) else "fg_general"


def triton_config(mod, variant: str, cfg: Mapping[str, Any]):
    """A record's config as the triton.Config FlagGems' kernel takes (GROUP_M is fixed to 8)."""
    import triton

    if int(cfg.get("SPLIT_K", 1)) != 1 or int(cfg.get("GROUP_M", 8)) != 8:
        raise ValueError(f"{variant} config {dict(cfg)} needs SPLIT_K=1 and GROUP_M=8 "
                         "(FlagGems' Hopper mm hard-codes them)")
    hook = mod.matmul_tma_set_block_size_hook if variant == "fg_tma" else None
    return triton.Config({k: int(cfg[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")},
                         num_warps=int(cfg["num_warps"]), num_stages=int(cfg["num_stages"]),
                         pre_hook=hook)


def same_config(c1, c2) -> bool:
    return c1.all_kwargs() == c2.all_kwargs()


def write_rows(model, table: str, rows: dict[tuple, Any]) -> str:
    """Upsert rows with one transaction into FlagGems' table; returns the physical name."""
    from flag_gems.utils.models.session import RollbackSession

    k0, c0 = next(iter(rows.items()))
    key_types = {k: type(v) for k, v in model.get_key_dict(k0).items()}
    val_types = {k: type(v) for k, v in model.get_config_dict(c0).items()}
    Model = model.get_sql_model(table, key_types, val_types)  # FlagGems names + creates it
    tbl = Model.__table__
    data = [{**model.get_key_dict(k), **model.get_config_dict(c)} for k, c in rows.items()]
    dialect = model.engine.dialect.name
    if dialect in ("sqlite", "postgresql"):
        ins = importlib.import_module(f"sqlalchemy.dialects.{dialect}").insert(tbl)
        pk = [c.name for c in tbl.primary_key.columns]
        upd = {c.name: ins.excluded[c.name] for c in tbl.columns if c.name not in pk}
        with model.engine.begin() as conn:
            conn.execute(ins.on_conflict_do_update(index_elements=pk, set_=upd), data)
    else:  # any other SQLAlchemy backend: FlagGems' own per-row merge
        with RollbackSession(model.engine) as s:
            for row in data:
                s.merge(Model(**row))
            s.commit()
    return tbl.name


def seed_mm_cache(
    records: Iterable[Mapping[str, Any]],
    *,
    max_tokens: int = 8192,
    db_url: str | None = None,
    allow_foreign: bool = False,
    running: Mapping[str, Any] | None = None,
    b_layouts: Iterable[str] = B_LAYOUTS,
) -> SeedReport:
    """Seed FlagGems' mm LibTuner caches from fg_tma / fg_general records.

    Every M in 1..max_tokens gets the config of the nearest tuned M (log space) of the
    same N, K, dtype, for both B layouts. With db_url=None the rows go into the running
    FlagGems' own cache database (what `tuner.cache` reads) and off-list configs are
    appended, with the TMA pre_hook, to the tuner's config list of this process. With a
    db_url the rows go into that database for another process (FLAGGEMS_DB_URL); off-list
    fg_tma configs are skipped there, since without this process's appended config they
    would run without their pre_hook.
    """
    from flag_gems.utils.models import SQLPersistantModel

    tuners = locate_mm_tuners()
    mod = locate_mm_module()
    mm = [r for r in records if r.get("kernel") == "mm"
          and (r.get("config") or {}).get("variant") in VARIANT_KERNELS]
    base = dict(running if running is not None else running_environment(ENV_FIELDS))
    hashes = {v: fg_kernel_source_hash(v) for v in VARIANT_KERNELS}
    check_records(mm, base, allow_foreign=allow_foreign,
                  running_for=lambda r: {"kernel_source_hash": hashes[r["config"]["variant"]]})
    report = SeedReport()
    # (variant, N, K, dtype) -> M -> BT -> record: FlagGems' cache keys tell B's layouts apart, so a key
    # tuned in both (the resampler's 640x3584x3584 is met as x @ P and as a Linear) seeds each its own
    groups: dict[tuple, dict[int, dict[int, Mapping]]] = {}
    for r in mm:
        k = r["key"]
        g = groups.setdefault((r["config"]["variant"], int(k["N"]), int(k["K"]), r["dtype"]), {})
        by_bt, bt = g.setdefault(int(k["M"]), {}), int(k.get("BT", 1))
        if bt in by_bt and by_bt[bt]["config"] != r["config"]:
            raise ValueError(f"two different mm configs for {k} {r['dtype']} {r['config']['variant']}")
        by_bt[bt] = r
    rows: dict[str, dict[tuple, Any]] = {}
    for (variant, N, K, dtype), by_m in sorted(groups.items()):
        where = f"{variant} N={N} K={K} {dtype}"
        if dtype not in DTYPE_ALIASES:
            report.skipped.append(f"{where}: dtype not supported")
            continue
        if reachable_variant(mod, N, K, dtype) != variant:
            report.skipped.append(f"{where}: FlagGems dispatches this shape to "
                                  f"{reachable_variant(mod, N, K, dtype)}, not {variant}")
            continue
        tuner = tuners[variant]
        cfgs: dict[int, dict[int, Any]] = {}  # M -> BT -> the listed config
        for m, by_bt in by_m.items():
            for bt, r in by_bt.items():
                cfg = triton_config(mod, variant, r["config"])
                listed = next((c for c in tuner.configs if same_config(c, cfg)), None)
                if listed is None and db_url is not None and variant == "fg_tma":
                    report.skipped.append(f"{where} M={m}: off-list TMA config cannot go to another process")
                    continue
                if listed is None:
                    tuner.configs.append(cfg)  # kernel_hash is cached: table name is unchanged
                    report.appended_configs += 1
                    listed = cfg
                cfgs.setdefault(m, {})[bt] = listed
                report.records += 1
        if not cfgs:
            continue
        for layout in b_layouts:
            # this layout's own record where there is one, else the other layout's
            mine = {m: by_bt.get(LAYOUT_BT[layout], next(iter(by_bt.values()))) for m, by_bt in cfgs.items()}
            key_of = functools.partial(_key_of, tuner, mod, variant, N, K, dtype, layout)
            for key, m in plan_buckets(sorted(mine), max_tokens, key_of).items():
                rows.setdefault(tuner.config_table_name, {})[key] = mine[m]
    model = None if db_url is None else SQLPersistantModel(db_url)
    for variant, tuner in tuners.items():
        table_rows = rows.get(tuner.config_table_name)
        if table_rows:
            physical = write_rows(model or tuner.cache.model, tuner.config_table_name, table_rows)
            report.rows[physical] = len(table_rows)
    for s in report.skipped:
        logger.warning("not seeded: %s", s)
    return report


@injector("mm_flaggems", label="mm via FlagGems cache", stage=FLAGGEMS)
def seed_mm_for_serving(records: list[dict[str, Any]], ctx: Context) -> int:
    return seed_mm_cache(records, max_tokens=ctx.max_tokens, allow_foreign=ctx.allow_foreign).records
