"""Runtime injection: turn best configs into what FlagGems / vLLM read at serve time.

Modules (one job each): `vllm_moe` (vLLM fused-MoE JSON files), `flaggems_moe` (FlagGems
MoE lookup hook), `flaggems_cache` (FlagGems LibTuner cache seeding), `mm_override`
(aten::mm split-K override), `plugin` (vLLM entry point + runtime folder), `foreign`
(refusing results from another machine). Submodules import flag_gems / torch lazily.
"""
from tuner.inject.foreign import ForeignResultError, check_records, running_environment
from tuner.inject.vllm_moe import config_file_name, export_moe_configs

__all__ = [
    "ForeignResultError",
    "check_records",
    "running_environment",
    "config_file_name",
    "export_moe_configs",
]
