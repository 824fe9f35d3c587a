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

from tuner.inject import _atomic
from tuner.inject.foreign import check_records, running_environment
from tuner.inject.vllm_moe import export_moe_configs

# Under "vllm." so the line goes through the handler vLLM installs on its logger tree.
logger = logging.getLogger("vllm.tuner")
STATE_FILE = "state.json"
MOE_FOLDER = "vllm_moe_configs"
FLAGGEMS_DB = "flaggems_cache.db"  # seeded rows live here, not in the user's ~/.flaggems cache
STATE_FORMAT = 1
_applied: dict[str, Any] | None = None  # vLLM may call general plugins more than once


def write_runtime_dir(
    folder: str | Path,
    records: Iterable[Mapping[str, Any]],
    exclude_ops: Iterable[str],
    *,
    max_tokens: int = 8192,
    enable_flaggems: bool = True,
    allow_foreign: bool = False,
    device_name: str | None = None,
    running: Mapping[str, Any] | None = None,
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
    staging = _atomic.staging_dir(folder)
    try:
        moe_files = export_moe_configs(records, staging / MOE_FOLDER, device_name=device_name,
                                       allow_foreign=True, running={})  # checked just above
        state = {
            "format": STATE_FORMAT,
            "exclude_ops": sorted(set(exclude_ops)),
            "enable_flaggems": enable_flaggems,
            "max_tokens": max_tokens,
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
    """Enable FlagGems minus the excluded ops and install every tuned config; return counts."""
    from tuner.inject.mm_override import install_mm_overrides, splitk_plan

    folder = Path(folder)
    state = read_state(folder)
    records, exclude = state["records"], state["exclude_ops"]
    moe_dir = folder / state["moe_folder"]
    # fg_* mm records get the full check (FlagGems version, kernel hash) in seed_mm_cache;
    # the rest is re-checked here because each engine process may sit on another GPU.
    others = [r for r in records if not str((r.get("config") or {}).get("variant", "")).startswith("fg_")]
    check_records(others, running_environment(("gpu_name", "triton")), allow_foreign=state["allow_foreign"])
    # vLLM reads this when a MoE layer first asks for its config, i.e. after plugins ran.
    if os.environ.setdefault("VLLM_TUNED_CONFIG_FOLDER", str(moe_dir)) != str(moe_dir):
        logger.warning("VLLM_TUNED_CONFIG_FOLDER=%s overrides the tuned MoE folder %s",
                       os.environ["VLLM_TUNED_CONFIG_FOLDER"], moe_dir)
    counts = {"fused_moe": sum(1 for r in records if r.get("kernel") == "fused_moe"),
              "mm_flaggems": 0, "addmm_flaggems": 0, "bmm_flaggems": 0,
              "attention_flaggems": 0, "mm_splitk": 0, "config_memo": False}
    if state["enable_flaggems"]:
        if "flag_gems" in sys.modules:  # too late to move its cache: seeding goes where it points
            logger.warning("flag_gems was imported before the tuner plugin; tuned mm rows go to "
                           "its cache database %s", os.environ.get("FLAGGEMS_DB_URL", "(default)"))
        else:
            os.environ.setdefault("FLAGGEMS_DB_URL", runtime_env(folder)["FLAGGEMS_DB_URL"])
        import flag_gems

        from tuner.inject.attention_cache import seed_attention_cache
        from tuner.inject.flaggems_addmm import seed_addmm_cache
        from tuner.inject.flaggems_bmm import seed_bmm_cache
        from tuner.inject.flaggems_cache import seed_mm_cache
        from tuner.inject.flaggems_moe import install_flaggems_moe_hook

        # split-K winners take aten::mm over and hand every other key to FlagGems' mm; torch
        # allows one Python kernel per op and dispatch key, so FlagGems must not register mm too
        unused = list(exclude) + (["mm"] if splitk_plan(records, state["max_tokens"]) else [])
        flag_gems.enable(unused=unused)  # a list: no vendor default exclude list
        report = seed_mm_cache(records, max_tokens=state["max_tokens"],
                               allow_foreign=state["allow_foreign"])
        counts["mm_flaggems"] = report.records
        counts["addmm_flaggems"] = seed_addmm_cache(records, max_tokens=state["max_tokens"],
                                                    allow_foreign=state["allow_foreign"]).records
        counts["bmm_flaggems"] = seed_bmm_cache(records, max_tokens=state["max_tokens"],
                                                allow_foreign=state["allow_foreign"]).records
        # FlagGems' flash_fwd_kernel (reached when torch or the engine picks FlagGems' flash
        # attention; on an H100 torch's SDPA prefers cuDNN): one config per head dim and dtype
        counts["attention_flaggems"] = seed_attention_cache(records, allow_foreign=state["allow_foreign"])
        install_flaggems_moe_hook(moe_dir)
        # FlagGems reads its SQL config cache on every kernel call; serve those reads from memory
        from tuner.inject.flaggems_memo import install_config_memo

        install_config_memo()
        counts["config_memo"] = True
    if splitk_plan(records, state["max_tokens"]):
        import torch

        if torch.cuda.is_available():
            fallback = None
            if state["enable_flaggems"] and "mm" not in exclude:
                from kernels.mm import flag_gems_mm_module

                fallback = flag_gems_mm_module().mm  # seeded above: no autotuning
            if install_mm_overrides(records, max_tokens=state["max_tokens"], fallback=fallback).lib is not None:
                counts["mm_splitk"] = sum(1 for r in records if r.get("kernel") == "mm"
                                          and r["config"].get("variant") == "splitk")
        else:
            logger.warning("split-K mm winners not installed: no CUDA GPU in this process")
    counts["exclude_ops"] = list(exclude)
    return counts


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
    if _applied is None:
        _applied = apply_state(folder)
    c = _applied
    total = (c["fused_moe"] + c["mm_flaggems"] + c["addmm_flaggems"] + c["bmm_flaggems"]
             + c["attention_flaggems"] + c["mm_splitk"])
    logger.info(
        "tuner plugin: %d tuned configs active (fused_moe %d, mm via FlagGems cache %d, "
        "addmm via FlagGems cache %d, bmm via FlagGems cache %d, attention via FlagGems autotuner %d, "
        "mm split-K %d); FlagGems excluded ops: %s%s",
        total, c["fused_moe"], c["mm_flaggems"], c["addmm_flaggems"], c["bmm_flaggems"],
        c["attention_flaggems"], c["mm_splitk"],
        ", ".join(c["exclude_ops"]) or "none",
        "; FlagGems config cache read from memory" if c.get("config_memo") else "",
    )
