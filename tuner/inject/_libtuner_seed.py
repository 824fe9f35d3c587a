"""The common part of seeding one FlagGems LibTuner kernel's config cache (addmm, bmm).

Records arrive grouped by everything of the runtime key except M (the caller knows its kernel's
key); every M in 1..max_tokens gets the config of the nearest tuned M of its group, bucketed by
the LibTuner's own key (plan_buckets), and all rows go in with one upsert into FlagGems' table.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tuner.devices import DTYPE_ALIASES
from tuner.inject._select import plan_buckets
from tuner.inject.flaggems_cache import (
    SeedReport,
    UnsupportedFlagGemsError,
    check_version,
    require_libtuner,
    same_config,
    write_rows,
)
from tuner.inject.foreign import ENV_FIELDS, check_records, running_environment

logger = logging.getLogger(__name__)


def locate_libtuner(load_module: Callable[[], Any], attr: str):
    """The LibTuner of FlagGems' `attr` kernel in the module `load_module()` returns, checked
    for what seeding uses (a FlagGems that changed it is refused, not half-seeded)."""
    check_version()
    from flag_gems.utils.libentry import LibEntry

    from kernels.flaggems_ops import libtuner

    entry = getattr(load_module(), attr, None)
    if not isinstance(entry, LibEntry):
        raise UnsupportedFlagGemsError(f"FlagGems' {attr} is not a LibEntry-wrapped LibTuner")
    return require_libtuner(libtuner(entry), attr, extra=("arg_names",))


def triton_config(cfg: Mapping[str, Any], meta_keys: tuple[str, ...], pre_hook=None):
    """A stored config as the triton.Config FlagGems' list holds (meta-parameters + launch)."""
    import triton

    return triton.Config({k: int(cfg[k]) for k in meta_keys}, num_warps=int(cfg["num_warps"]),
                         num_stages=int(cfg["num_stages"]), pre_hook=pre_hook)


def seed_groups(
    tuner,
    groups: Mapping[tuple, Mapping[int, Mapping[str, Any]]],
    *,
    what: Callable[[tuple], str],
    key_of: Callable[[tuple, int], tuple],
    meta_keys: tuple[str, ...],
    max_tokens: int,
    db_url: str | None,
    report: SeedReport,
) -> None:
    """Write the rows of every group (its last element is the dtype) into `tuner`'s cache.

    A config outside FlagGems' list gets the list's pre_hook appended in this process when the
    list carries one (no current list does); for another process (db_url) it is skipped, since
    a row cannot carry a hook.
    """
    from flag_gems.utils.models import SQLPersistantModel

    hook = next((c.pre_hook for c in tuner.configs if c.pre_hook is not None), None)
    rows: dict[tuple, Any] = {}
    for group, by_m in sorted(groups.items()):
        where = what(group)
        if group[-1] not in DTYPE_ALIASES:
            report.skipped.append(f"{where}: dtype not supported")
            continue
        cfgs = {}
        for m, r in sorted(by_m.items()):
            cfg = triton_config(r["config"], meta_keys, hook)
            listed = next((c for c in tuner.configs if same_config(c, cfg)), None)
            if listed is None and hook is not None:
                if db_url is not None:
                    report.skipped.append(f"{where} M={m}: off-list config needs this process's pre_hook")
                    continue
                tuner.configs.append(cfg)  # kernel_hash is cached: the table name is unchanged
                report.appended_configs += 1
            cfgs[m] = listed or cfg
        if not cfgs:
            continue
        for key, m in plan_buckets(sorted(cfgs), max_tokens, lambda m, g=group: key_of(g, m)).items():
            rows[key] = cfgs[m]
        report.records += len(cfgs)
    if rows:
        model = tuner.cache.model if db_url is None else SQLPersistantModel(db_url)
        report.rows[write_rows(model, tuner.config_table_name, rows)] = len(rows)


def seed_kernel_records(
    records: Iterable[Mapping[str, Any]],
    *,
    kernel: str,
    variant: str,
    locate: Callable[[], Any],
    source_hash: Callable[[], str],
    group: Callable[[list, SeedReport], Mapping[tuple, Mapping[int, Mapping[str, Any]]]],
    what: Callable[[tuple], str],
    key_of: Callable[[Any, tuple, int], tuple],
    meta_keys: tuple[str, ...],
    max_tokens: int,
    db_url: str | None,
    allow_foreign: bool,
    running: Mapping[str, Any] | None,
) -> SeedReport:
    """Seed one LibTuner kernel from its `variant` records: refuse foreign ones (GPU, Triton,
    FlagGems version, kernel source hash), group them, write the rows, log what was skipped."""
    recs = [r for r in records if r.get("kernel") == kernel
            and (r.get("config") or {}).get("variant") == variant]
    if not recs:  # nothing to seed: do not depend on this FlagGems kernel's internals at all
        return SeedReport()
    tuner = locate()
    base = dict(running if running is not None else running_environment(ENV_FIELDS))
    expected = {"kernel_source_hash": source_hash()}
    check_records(recs, base, allow_foreign=allow_foreign, running_for=lambda r: expected)
    report = SeedReport()
    seed_groups(tuner, group(recs, report), what=what, key_of=lambda g, m: key_of(tuner, g, m),
                meta_keys=meta_keys, max_tokens=max_tokens, db_url=db_url, report=report)
    for s in report.skipped:
        logger.warning("not seeded: %s", s)
    return report
