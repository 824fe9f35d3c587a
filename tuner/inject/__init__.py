"""Runtime injection: turn best configs into what FlagGems / vLLM read at serve time.

Modules (one job each): `vllm_moe` (vLLM fused-MoE JSON files), `flaggems_moe` (FlagGems
MoE lookup hook), `flaggems_cache` (FlagGems LibTuner mm cache seeding), `gemm_router`
(each mm / addmm key to tuned FlagGems, split-K or native), `plugin` (vLLM entry point + runtime folder), `foreign`
(refusing results from another machine), `registry` (the injectors the plugin runs, each
registered beside the code it drives). Importing this package imports neither torch,
flag_gems nor vllm: each function imports what it needs when called.
"""
from tuner.inject.flaggems_cache import SeedReport, fg_kernel_source_hash, seed_mm_cache
from tuner.inject.flaggems_moe import install_flaggems_moe_hook
from tuner.inject.foreign import ForeignResultError, check_records, running_environment
from tuner.inject.gemm_router import Router, install_router, plan_routes
from tuner.inject.plugin import apply_state, register, runtime_env, write_runtime_dir
from tuner.inject.vllm_moe import config_file_name, export_moe_configs

__all__ = [
    "ForeignResultError",
    "Router",
    "SeedReport",
    "apply_state",
    "check_records",
    "config_file_name",
    "export_moe_configs",
    "fg_kernel_source_hash",
    "install_flaggems_moe_hook",
    "install_router",
    "register",
    "running_environment",
    "runtime_env",
    "seed_mm_cache",
    "plan_routes",
    "write_runtime_dir",
]
