"""vLLM `general_plugins` entry point: apply a `tuner serve` runtime folder in every vLLM process.

pyproject.toml:  [project.entry-points."vllm.general_plugins"]  tuner = "tuner.inject.plugin:register"
The folder (TUNER_RUNTIME_DIR) holds state.json and the vLLM fused-MoE JSON files.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tuner.errors import UserError
from tuner.inject import _atomic, registry
from tuner.inject.foreign import check_records, running_environment
from tuner.inject.vllm_moe import FLAGGEMS_OP, FLAGGEMS_SUBFOLDER, export_moe_configs

logger = logging.getLogger(registry.LOGGER)  # "vllm.tuner": vLLM's handlers print its one line
STATE_FILE = "state.json"
MOE_FOLDER = "vllm_moe_configs"
FLAGGEMS_DB = "flaggems_cache.db"  # seeded rows live here, not in the user's ~/.flaggems cache
STATE_FORMAT = 1
_applied: dict[str, Any] | None = None  # vLLM may call general plugins more than once


def refuse_foreign_folder(folder: Path) -> None:
    """A runtime folder is replaced as a whole: refuse a path that holds anything but one tuner
    wrote (its state.json) or an empty folder. `serve --runtime-dir ~/project` once swapped the
    project out and deleted it."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--runtime-dir {folder} is a file; give a new or empty folder (tuner replaces it whole)")
    if folder.is_dir() and not (folder / STATE_FILE).is_file() and any(folder.iterdir()):
        raise UserError(f"--runtime-dir {folder} holds files tuner did not write (no {STATE_FILE}); give a new "
                        f"or empty folder (tuner replaces it whole)")


def write_runtime_dir(
    folder: str | Path,
    records: Iterable[Mapping[str, Any]],
    exclude_ops: Iterable[str],
    *,
    max_tokens: int = 8192,
    enable_flaggems: bool = True,
    flaggems_ops: str = "all",
    allow_foreign: bool = False,
    device_name: str | None = None,
    running: Mapping[str, Any] | None = None,
    route_within: float = 1.0,
) -> Path:
    """Prepare TUNER_RUNTIME_DIR: state.json plus vLLM MoE files, swapped in atomically.

    An existing folder is replaced as a whole (its FlagGems DB too: the plugin re-seeds it
    at every start). Records are checked against the running GPU and Triton here (`running` overrides
    the detected values); FlagGems version and kernel hashes are checked by the plugin
    inside the engine, where FlagGems is loaded.
    """
    records = [dict(r) for r in records]
    run = dict(running) if running is not None else running_environment(("gpu_name", "triton"))
    check_records(records, run, allow_foreign=allow_foreign)
    folder = Path(folder)
    refuse_foreign_folder(folder)
    staging = _atomic.staging_dir(folder)
    try:
        # checked just above; vLLM's kernel's records to vLLM's folder, FlagGems' to its subfolder
        moe_files = export_moe_configs(records, staging / MOE_FOLDER, device_name=device_name,
                                       allow_foreign=True, running={}, max_tokens=max_tokens)
        export_moe_configs(records, staging / MOE_FOLDER / FLAGGEMS_SUBFOLDER, op=FLAGGEMS_OP,
                           device_name=device_name, allow_foreign=True, running={})
        state = {
            "format": STATE_FORMAT,
            "exclude_ops": sorted(set(exclude_ops)),
            "enable_flaggems": enable_flaggems,
            "flaggems_ops": flaggems_ops,
            "max_tokens": max_tokens,
            "route_within": route_within,
            "allow_foreign": allow_foreign,
            "moe_folder": MOE_FOLDER,
            "moe_files": [p.name for p in moe_files],
            "records": records,
        }
        (staging / MOE_FOLDER).mkdir(exist_ok=True)
        _atomic.write_json(staging / STATE_FILE, state)
        _atomic.replace_dir(staging, folder)
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def runtime_env(folder: str | Path) -> dict[str, str]:
    """Environment for the engine launched by `tuner serve` (set before vLLM starts).

    FLAGGEMS_DB_URL is read when flag_gems is imported, so it must be set before any
    module imports it; the plugin sets the same defaults when they are missing.
    """
    folder = Path(folder).resolve()
    return {"TUNER_RUNTIME_DIR": str(folder),
            "VLLM_TUNED_CONFIG_FOLDER": str(folder / MOE_FOLDER),
            "FLAGGEMS_DB_URL": f"sqlite:///{folder / FLAGGEMS_DB}"}


def read_state(folder: str | Path) -> dict[str, Any]:
    state = json.loads((Path(folder) / STATE_FILE).read_text())
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{folder}/{STATE_FILE} has format {state.get('format')}, expected {STATE_FORMAT}")
    return state


def apply_state(folder: str | Path) -> dict[str, Any]:
    """Enable FlagGems minus the excluded ops and run every injector (tuner.inject.registry),
    stage by stage; return each counted injector's count, config_memo and exclude_ops."""
    folder = Path(folder)
    state = read_state(folder)
    vllm_kernels_first()
    records = state["records"]
    ctx = registry.Context(folder=folder, exclude=state["exclude_ops"], max_tokens=state["max_tokens"],
                           allow_foreign=state["allow_foreign"], enable_flaggems=state["enable_flaggems"],
                           moe_dir=folder / state["moe_folder"], log=logger,
                           flaggems_ops=state.get("flaggems_ops", "all"),
                           route_within=float(state.get("route_within", 1.0)))
    # fg_* mm records get the full check (FlagGems version, kernel hash) in seed_mm_cache;
    # the rest is re-checked here because each engine process may sit on another GPU.
    others = [r for r in records if not str((r.get("config") or {}).get("variant", "")).startswith("fg_")]
    check_records(others, running_environment(("gpu_name", "triton")), allow_foreign=ctx.allow_foreign)
    counts: dict[str, Any] = {i.name: 0 for i in registry.counted()}
    counts["config_memo"] = False
    _run_stage(registry.ENGINE, records, ctx, counts)
    if ctx.enable_flaggems:
        _enable_flaggems(records, ctx)
        _run_stage(registry.FLAGGEMS, records, ctx, counts)
        # FlagGems reads its SQL config cache on every kernel call; serve those reads from memory
        from tuner.inject.flaggems_memo import install_config_memo

        install_config_memo()
        counts["config_memo"] = True
    _run_stage(registry.OVERRIDE, records, ctx, counts)
    counts["exclude_ops"] = list(ctx.exclude)
    from tuner.inject.gemm_router import route_counts

    counts["routes"] = route_counts(records, ctx.route_within)
    counts["route_within"] = ctx.route_within
    counts["flaggems_ops"] = ctx.flaggems_ops if ctx.enable_flaggems else "none"
    return counts


def vllm_kernels_first() -> None:
    """In a vLLM process, register vLLM's custom ops before anything imports flag_gems.

    flag_gems 5.0.2 imports `vllm._moe_C` to learn whether vLLM's MoE ops exist and, when that fails,
    defines `_moe_C::topk_softmax` (and moe_sum, moe_align_block_size, grouped_topk) with schemas of
    its own. vLLM 0.26 names the library `_moe_C_stable_libtorch`: FlagGems' 4-argument topk_softmax
    went in first, vLLM's (6 arguments) failed to register over it, and a MoE model's engine died at
    its first topk_softmax call (H200, random-weight Qwen3-MoE served with tuner's configs). vLLM's
    own kernel import, first, makes FlagGems find the ops and define nothing."""
    if "vllm" not in sys.modules:  # transformers' server: no vLLM ops to protect
        return
    try:
        from vllm.platforms import current_platform

        current_platform.import_kernels()
    except Exception as e:  # a platform without the kernels: FlagGems' own definitions are then all there is
        logger.warning("tuner plugin: vLLM's kernels did not import before FlagGems (%s)", e)


def _enable_flaggems(records: list[dict[str, Any]], ctx: registry.Context) -> None:
    """Point FlagGems' config cache at the runtime folder, then enable it minus the excluded ops
    and the ops an injector takes over."""
    if "flag_gems" in sys.modules:  # too late to move its cache: seeding goes where it points
        logger.warning("flag_gems was imported before the tuner plugin; tuned mm rows go to "
                       "its cache database %s", os.environ.get("FLAGGEMS_DB_URL", "(default)"))
    else:
        os.environ.setdefault("FLAGGEMS_DB_URL", runtime_env(ctx.folder)["FLAGGEMS_DB_URL"])
    import flag_gems

    if ctx.flaggems_ops == "routed":  # no aten op registered: only the GEMM router calls FlagGems
        return
    claimed = [op for i in registry.injectors() if i.claims is not None for op in i.claims(records, ctx)]
    flag_gems.enable(unused=flaggems_unused([*ctx.exclude, *claimed]))  # a list: no vendor default


def flaggems_unused(ops: Iterable[str]) -> list[str]:
    """The names `flag_gems.enable(unused=...)` needs to leave an op out entirely: it matches the
    function names of its registration table, where `addmm.out` is `addmm_out` and `mul_.Tensor`
    is `mul_`, so excluding "addmm" alone left vLLM's compiled `addmm.out` calls on FlagGems (H200:
    1,792 addmm_kernel calls with addmm excluded)."""
    names: list[str] = []
    for op in ops:
        base = op[:-4] if op.endswith("_out") else op.rstrip("_")
        for name in (base, f"{base}_out", f"{base}_"):
            if name not in names:
                names.append(name)
    return names


def _run_stage(stage: str, records: list[dict[str, Any]], ctx: registry.Context, counts: dict[str, Any]) -> None:
    for inj in registry.injectors(stage):
        count = inj.apply(records, ctx)
        if inj.label is not None:
            counts[inj.name] = count


def _ensure_visible() -> None:
    """vLLM 0.33 configures its "vllm" logger explicitly, not in every process before
    plugins load; without any handler up the chain our one line would be dropped."""
    if not logger.hasHandlers():
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [%(name)s] %(message)s"))
        logger.addHandler(h)
        logger.setLevel(logging.INFO)


def register() -> None:
    """The vLLM entry point; logs exactly one line saying what is active."""
    global _applied
    _ensure_visible()
    folder = os.environ.get("TUNER_RUNTIME_DIR")
    if not folder:
        logger.info("tuner plugin: TUNER_RUNTIME_DIR is unset; no tuned configs injected")
        return
    if _applied is None and vllm_front_end():
        # vLLM loads plugins once per process: a forked engine core inherits "loaded" and would never
        # apply the state (H200: FlagGems absent from a forked engine's trace); a spawned one loads them
        method = os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        if method != "spawn":
            logger.warning("VLLM_WORKER_MULTIPROC_METHOD=%s: forked engine processes do not run plugins "
                           "again; tuned configs apply only with spawn", method)
        logger.info("tuner plugin: vLLM front-end process; %s applies in the engine processes", folder)
        return
    if _applied is None:
        _applied = apply_state(folder)
    logger.info("%s", active_line(_applied))


def vllm_front_end() -> bool:
    """True in the process that starts vLLM's engine core in a child (the API server, or an
    offline `LLM` with V1 multiprocessing): no kernel runs there, so FlagGems is not imported and
    CUDA is not initialised (which made vLLM switch to the spawn start method)."""
    import multiprocessing

    if "vllm" not in sys.modules:  # transformers' server (sitecustomize): one process serves
        return False
    if multiprocessing.current_process().name.startswith("ApiServer"):  # --api-server-count > 1
        return True
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0":
        return False
    # NOT handled: Ray workers have no multiprocessing parent either (they would be skipped)
    return multiprocessing.parent_process() is None


def active_line(counts: Mapping[str, Any]) -> str:
    """The plugin's one log line for apply_state's counts: each counted injector, in registry order."""
    shown = registry.counted()
    return "tuner plugin: %d tuned configs active (%s); FlagGems excluded ops: %s%s" % (
        sum(counts[i.name] for i in shown), ", ".join("%s %d" % (i.label, counts[i.name]) for i in shown),
        ", ".join(counts["exclude_ops"]) or "none",
        "; FlagGems config cache read from memory" if counts.get("config_memo") else "",
    ) + _routes_text(counts)


def _routes_text(counts: Mapping[str, Any]) -> str:
    """Where the stored GEMM keys go and which FlagGems ops are registered, when it says more than
    the counts: a router with keys, or FlagGems restricted to the routed GEMMs."""
    routes = counts.get("routes") or {}
    text = ""
    if any(routes.values()):
        from tuner.inject.gemm_router import counts_text

        text += "; GEMM keys: " + counts_text(routes)
        within = counts.get("route_within", 1.0)
        if within != 1.0:
            text += " (routed where under %gx cuBLAS's time)" % within
    if counts.get("flaggems_ops") == "routed":
        text += "; FlagGems registers no aten op (only routed GEMM keys reach its kernels)"
    return text
