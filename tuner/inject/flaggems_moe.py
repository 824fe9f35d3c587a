"""Make FlagGems' fused MoE use its tuned configs (fused_moe records, timed in FlagGems' kernel),
exported in vLLM's file format to the runtime folder's FLAGGEMS_SUBFOLDER.

FlagGems 5.0.2 reads its MoE config from an embedded table the wheel does not ship,
so it always falls back to a heuristic. `fused_experts_impl` looks up the module
global `try_get_optimal_moe_config` at call time, so replacing that global is enough.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

from tuner.inject.registry import FLAGGEMS, Context, injector
from tuner.inject.vllm_moe import FLAGGEMS_SUBFOLDER, check_moe_sources, device_file_name, load_moe_folder

logger = logging.getLogger(__name__)
_MODULE = "flag_gems.fused.fused_moe"


def install_flaggems_moe_hook(folder: str | Path, device_name: str | None = None) -> Callable[[], None]:
    """Replace FlagGems' `try_get_optimal_moe_config`; return a function that restores it.

    Tuned tables are read once from `folder` (files written by `export_moe_configs`),
    keeping those for `device_name` (default: the running GPU; without one, all files,
    which is only unambiguous when the folder holds one device). Unknown shapes fall
    back to FlagGems' original function.
    """
    import importlib

    mod = importlib.import_module(_MODULE)
    original = mod.try_get_optimal_moe_config
    original = getattr(original, "__tuner_original__", original)  # idempotent re-install
    if device_name is None:
        from tuner.inject.foreign import running_gpu_name

        device_name = running_gpu_name()
    want_dev = device_file_name(device_name) if device_name else None
    tables: dict[tuple, dict[int, dict[str, int]]] = {}
    for (E, N, dtype, dev, bs), table in load_moe_folder(folder).items():
        if want_dev is not None and dev != want_dev:
            continue
        if (E, N, dtype, bs) in tables:
            raise ValueError(f"{folder} holds tuned MoE configs for several devices; pass device_name")
        tables[(E, N, dtype, bs)] = table

    @functools.wraps(original)
    def tuned_try_get_optimal_moe_config(w1_shape, w2_shape, top_k, dtype, M, E, block_shape=None):
        # Same key derivation as FlagGems/vLLM: E, _, N = w2_shape; int4 packs two per byte.
        _, _, N = w2_shape
        if dtype == "int4_w4a16":
            N = N * 2
        bs = tuple(block_shape) if block_shape and all(block_shape) else None
        table = tables.get((int(w2_shape[0]), int(N), dtype, bs))
        if table:
            # nearest M by absolute distance: exactly what FlagGems/vLLM do with a file
            return dict(table[min(table, key=lambda x: abs(x - M))])
        return original(w1_shape, w2_shape, top_k, dtype, M, E, block_shape)

    tuned_try_get_optimal_moe_config.__tuner_original__ = original
    tuned_try_get_optimal_moe_config.__tuner_tables__ = tables
    mod.try_get_optimal_moe_config = tuned_try_get_optimal_moe_config
    logger.debug("FlagGems MoE lookup hooked with %d tuned tables", len(tables))

    def restore() -> None:
        mod.try_get_optimal_moe_config = original

    return restore


@injector("fused_moe_flaggems_hook", label=None, stage=FLAGGEMS)
def hook_flaggems_moe_for_serving(records: list[dict], ctx: Context) -> int:
    """FlagGems' fused MoE reads the fused_moe records' files (FLAGGEMS_SUBFOLDER), once no record
    was tuned on another source of FlagGems' kernel: a stale record stops the engine here
    (ForeignResultError, or a loud warning with allow_foreign)."""
    check_moe_sources(records, ctx.allow_foreign)
    install_flaggems_moe_hook(ctx.moe_dir / FLAGGEMS_SUBFOLDER)
    return 0
