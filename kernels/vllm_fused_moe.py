"""Tunable fused MoE timed in vLLM's own kernel: the configs vLLM reads from its JSON files.

Same key, space, constraints, inputs and reference as kernels/fused_moe.py (FlagGems' port of this
kernel), but every candidate and every baseline runs vLLM's fused-MoE path with the given config
(vLLM's `fused_experts_impl`, step by step with vLLM's own functions: activation quantization,
`_prepare_expert_assignment`, two `dispatch_fused_moe_kernel` calls around `apply_moe_activation`,
`moe_sum`), so a winner is measured in the kernel that reads `VLLM_TUNED_CONFIG_FOLDER` when vLLM
serves a MoE model. Its record carries the source hash of vLLM's `fused_moe_kernel` Triton function.

Baselines, timed side by side in the same worker through the same runner: `untuned` (what vLLM
runs without tuner on this GPU: its shipped file's nearest M where the installed vllm ships one,
else `get_default_config`), `vllm_shipped` (where shipped), `vllm_default` (`get_default_config`)
and `flaggems_default` (FlagGems' own choice, where flag_gems imports). `untuned` is the same
config as one of the two vLLM baselines, timed again: the pair shows the run's noise.

The path needs vLLM's CUDA ops (moe_align_block_size, silu_and_mul, moe_sum, scaled_fp8_quant):
GPU only. On a CPU, vLLM's Triton kernel itself runs under TRITON_INTERPRET=1 (tests do that on
vLLM's naive token assignment, the one alignment vLLM computes in plain torch).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import json
from collections.abc import Callable, Mapping
from pathlib import Path

from kernels.base import Config, Coverage, KernelInputError, Key, Runner
from kernels.fused_moe import (
    CONFIG_KEYS,
    FP8,
    MODELS,
    SERVING_M,
    FusedMoE,
    flaggems_untuned_config,
    moe_buffers,
    vllm_config_folder,
    vllm_config_path,
)
from tuner import devices

VLLM_MODULE = "vllm.model_executor.layers.fused_moe.fused_moe"
KERNEL_FUNCTION = "fused_moe_kernel"  # the Triton function whose source identifies a record
NO_CPU = ("vllm_fused_moe has no CPU implementation: vLLM's fused-MoE path needs its CUDA ops "
          "(moe_align_block_size, silu_and_mul, moe_sum) and an NVIDIA GPU (use --device cuda)")
# A tuned M serves the runtime M within this factor of it (as the GEMM router's records do)
COVER_RATIO = 2
DEFAULT_MAX_TOKENS = 8192  # vLLM's max_num_batched_tokens that `<model>-serve` presets cover


# ---- vLLM's kernel source: its identity, read without importing vllm ---------------------------
def vllm_kernel_file() -> Path | None:
    """vLLM's fused_moe.py of the installed vllm (the configs folder's parent), None without one."""
    folder = vllm_config_folder()
    path = folder.parent / "fused_moe.py" if folder is not None else None
    return path if path is not None and path.is_file() else None


def kernel_source(path: Path) -> str:
    """The text of `def fused_moe_kernel(...)` through its last line (no decorator), parsed from
    the file: the same in the tuning worker, in `tuner serve` and in the engine, without
    importing vllm (the plugin runs before vLLM builds its MoE layers)."""
    text = Path(path).read_text()
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == KERNEL_FUNCTION:
            return ast.get_source_segment(text, node)
    raise KernelInputError(f"{path} defines no {KERNEL_FUNCTION}: not a vLLM fused-MoE module tuner knows")


def vllm_kernel_source_hash(path: Path | None = None) -> str:
    """sha256 of vLLM's fused_moe_kernel source (what a vllm_fused_moe record was tuned on)."""
    path = path or vllm_kernel_file()
    if path is None:
        raise KernelInputError("vllm is not installed: vllm_fused_moe needs vLLM's fused-MoE kernel")
    return hashlib.sha256(kernel_source(path).encode()).hexdigest()


# ---- vLLM's own config choice ------------------------------------------------------------------
def _vllm_fm():
    return importlib.import_module(VLLM_MODULE)


def config_dtype(dtype: str) -> str | None:
    """vLLM's config dtype selector (bf16/fp16: None)."""
    return FP8 if dtype == FP8 else None


def vllm_default_config(key: Key, dtype: str = "bf16") -> Config:
    """vLLM's `get_default_config` for this key (imports vLLM's fused-MoE module, CPU or GPU)."""
    E, N, K, top_k, M = key
    cfg = _vllm_fm().get_default_config(M, E, N, K, top_k, config_dtype(dtype), None)
    return {k: int(cfg[k]) for k in CONFIG_KEYS}


def shipped_table(E: int, N: int, gpu_name: str, dtype: str = "bf16") -> dict[int, Config] | None:
    """vLLM's shipped {M: config} for (E, N, dtype) on this GPU, None where it ships none."""
    path = vllm_config_path(E, N, gpu_name, dtype)
    if path is None:
        return None
    return {int(m): {k: int(c[k]) for k in CONFIG_KEYS} for m, c in json.loads(path.read_text()).items()
            if m.isdigit()}


def nearest(table: Mapping[int, Config], M: int) -> Config:
    """vLLM's pick from a config file: the nearest M key, ties to the smaller."""
    return dict(table[min(sorted(table), key=lambda m: abs(m - M))])


def vllm_picker(E: int, N: int, K: int, top_k: int, gpu_name: str, dtype: str = "bf16") -> Callable[[int], Config]:
    """M -> what vLLM runs for (E, N, K, top_k) on this GPU without tuner's file: its shipped
    file's nearest M, else `get_default_config`."""
    table = shipped_table(E, N, gpu_name, dtype)
    if table:
        return lambda M: nearest(table, M)
    return lambda M: vllm_default_config((E, N, K, top_k, M), dtype)


# ---- which M to tune, and the keys that make every runtime M land on a tuned one -------------
def ms_to_tune(max_tokens: int) -> list[int]:
    """Batch sizes whose COVER_RATIO neighbourhoods cover every M from 1 to `max_tokens`:
    1, 4, 16, ... (each covers M/2 .. 2M), up to the first whose 2M reaches max_tokens."""
    ms = [1]
    while ms[-1] * COVER_RATIO < max_tokens:
        ms.append(ms[-1] * COVER_RATIO * COVER_RATIO)
    return ms


def covering(M: int, tuned: list[int]) -> int | None:
    """The tuned M serving runtime M: the closest by ratio within COVER_RATIO, ties to the smaller;
    None when none is that close."""
    near = [t for t in sorted(tuned) if max(M / t, t / M) <= COVER_RATIO]
    return min(near, key=lambda t: max(M / t, t / M)) if near else None


def batch_table(tuned: Mapping[int, Config], max_tokens: int, fallback: Callable[[int], Config]) -> dict[int, Config]:
    """The {M: config} a vLLM config file must hold so that vLLM's nearest-key lookup gives every
    M from 1 to `max_tokens` (chunked prefill; the CUDA-graph capture sizes lie in it) the config
    tuned for the tuned M covering it, and `fallback(M)` (what vLLM runs without the file: its
    shipped or default config) where no tuned M is within COVER_RATIO. A file replaces vLLM's own
    choice for every M of its shape, so an uncovered M must not inherit a far-off tuned config.
    Each run of equal configs over consecutive M is written as its two end points: between them
    vLLM's nearest key is one of the two, so the lookup reproduces the assignment exactly; M above
    max_tokens gets the last run's config."""
    top = max(max_tokens, *tuned) if tuned else max_tokens
    runs: list[list] = []  # [first M, last M, config]
    ms = list(tuned)
    for M in range(1, top + 1):
        t = covering(M, ms)
        cfg = dict(tuned[t]) if t is not None else fallback(M)
        if runs and runs[-1][2] == cfg:
            runs[-1][1] = M
        else:
            runs.append([M, M, cfg])
    return {m: dict(cfg) for first, last, cfg in runs for m in sorted({first, last})}


# ---- vLLM's fused-MoE path with a given config --------------------------------------------------
def _accepted(fn, **kwargs) -> dict:
    """The keyword arguments `fn` takes (vLLM 0.26 and 0.33 differ in optional ones)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def _vllm_runner(key: Key, config: Config, dtype: str) -> Runner:
    """vLLM's fused_experts_impl for one call, with its own functions in its order, the config
    given (as `override_config` gives it), and the result summed into `out` by its moe_sum:
    calling fused_experts itself would add a copy of its freshly allocated output to every timed
    call. Buffers are allocated once (same sizes every call: CUDA-graph safe); cache1 and cache3
    share memory as in vLLM. fp8_w8a8: per-expert weight scales, dynamic per-tensor activation
    scales (vLLM's online `--quantization fp8`). The GPU test checks bit-equality with
    `fused_experts` under `override_config`."""
    import triton.language as tl

    fm = _vllm_fm()
    E, N, K, top_k, M = key
    cfg = {k: int(config[k]) for k in CONFIG_KEYS}
    fp8 = dtype == FP8
    compute_type = getattr(tl, devices.TORCH_NAMES["bf16" if fp8 else dtype])
    quant_dtype = fm._get_config_quant_dtype(use_fp8_w8a8=fp8, use_int8_w8a8=False)
    flags = {"use_fp8_w8a8": fp8, "use_int8_w8a8": False, "use_int8_w8a16": False, "use_int4_w4a16": False,
             "per_channel_quant": False, "block_shape": None}
    prepare_kw = _accepted(fm._prepare_expert_assignment, ignore_invalid_experts=True)
    bufs: list = []

    def run(args, out):
        x, w1, w2, topk_weights, topk_ids = args[:5]
        w1_scale, w2_scale = args[5:] if fp8 else (None, None)
        if not bufs:
            bufs.extend(moe_buffers(x, key))
        c1, c2, c3 = bufs
        qx, a1_scale = fm.moe_kernel_quantize_input(x, None, quant_dtype, False, None)
        sorted_ids, expert_ids, post_pad = fm._prepare_expert_assignment(topk_ids, cfg, M, top_k, E, None,
                                                                         **prepare_kw)
        fm.dispatch_fused_moe_kernel(qx, w1, c1, a1_scale, w1_scale, None, topk_weights, sorted_ids, expert_ids,
                                     post_pad, False, top_k, cfg, compute_type=compute_type, **flags)
        fm.apply_moe_activation(fm.MoEActivation.SILU, c2, c1.view(-1, 2 * N))
        qc2, a2_scale = fm.moe_kernel_quantize_input(c2, None, quant_dtype, False, None)
        fm.dispatch_fused_moe_kernel(qc2, w2, c3, a2_scale, w2_scale, None, topk_weights, sorted_ids, expert_ids,
                                     post_pad, True, 1, cfg, compute_type=compute_type, **flags)
        fm.ops.moe_sum(c3, out)
        return out

    return run


# vLLM's fused-MoE custom ops (listed before fused_moe in kernels.REGISTRY, so vLLM's rows are
# this op's); vLLM reads the winners from the JSON files the "fused_moe" injector points it at
COVERAGE = Coverage(op_patterns=("vllm::fused_moe", "vllm::fused_experts", "vllm::outplace_fused_experts",
                                 "vllm::inplace_fused_experts", "_moe_c::"),
                    injectors=("fused_moe",))


class VllmFusedMoE(FusedMoE):
    name = "vllm_fused_moe"
    description = "fused MoE timed in vLLM's own fused_moe_kernel (what serves in vLLM), vLLM's config format"
    source_modules = (VLLM_MODULE,)

    def presets(self) -> Mapping[str, list]:
        """fused_moe's model presets; `moe-bench`: both models' keys (issue 16's bench shapes, TP 1
        and 2, M in SERVING_M); `<model>-serve`: TP 1 at the M that cover every batch up to
        DEFAULT_MAX_TOKENS (ms_to_tune)."""
        out = dict(super().presets())
        out["moe-bench"] = [k for name in MODELS for k in out[name]]
        for name, (E, ns, K, top_k) in MODELS.items():
            out[f"{name}-serve"] = [(E, ns[0], K, top_k, m) for m in ms_to_tune(DEFAULT_MAX_TOKENS)]
        return out

    def invalid_reason(self, key: Key, config: Config, dtype: str, device: str, arch: int = 9) -> str | None:
        if device != "cuda":
            return NO_CPU
        return super().invalid_reason(key, config, dtype, device, arch)

    def tall_tile_reason(self, key: Key, bm: int, dtype: str) -> str | None:
        """fp8_w8a8: none. vLLM's kernel swaps A and B for fp8 (SWAP_AB, 0.26 and 0.33), and vLLM's
        own H200 fp8 tables pick BLOCK_SIZE_M=64 for Mixtral at M=1 and 16, where FlagGems' rule
        calls the extra rows padding: the search must be able to measure vLLM's winner."""
        return None if dtype == FP8 else super().tall_tile_reason(key, bm, dtype)

    def runner(self, key: Key, config: Config, dtype: str, device: str) -> Runner:
        if device != "cuda":
            raise KernelInputError(NO_CPU)
        return _vllm_runner(key, config, dtype)

    def baseline_configs(self, key: Key, dtype: str, gpu_name: str, flaggems: bool = True) -> dict[str, Config]:
        """name -> config of every baseline (see the module docstring), in timing order; FlagGems'
        is asked only with `flaggems` (its lookup needs a GPU)."""
        E, N, _, _, M = key
        table = shipped_table(E, N, gpu_name, dtype)
        default = vllm_default_config(key, dtype)
        out = {"untuned": nearest(table, M) if table else default}
        if table:
            out["vllm_shipped"] = nearest(table, M)
        out["vllm_default"] = default
        if flaggems and importlib.util.find_spec("flag_gems") is not None:  # a vLLM host may lack it
            out["flaggems_default"] = flaggems_untuned_config(key, dtype)
        return out

    def baselines(self, key: Key, dtype: str, device: str) -> dict[str, Runner]:
        if device != "cuda":
            return {}
        import torch

        configs = self.baseline_configs(key, dtype, torch.cuda.get_device_name())
        return {name: self.runner(key, c, dtype, device) for name, c in configs.items()}

    def untuned_configs(self, key: Key, dtype: str, device: str) -> list[Config]:
        """The warm start: every baseline config, once each."""
        if device != "cuda":
            return []
        import torch

        out: list[Config] = []
        for c in self.baseline_configs(key, dtype, torch.cuda.get_device_name()).values():
            if c not in out:
                out.append(c)
        return out

    def source_hash(self, config: Config | None = None) -> str:
        """sha256 of vLLM's fused_moe_kernel source (what a config is tuned for)."""
        return vllm_kernel_source_hash()


__all__ = ["COVERAGE", "COVER_RATIO", "SERVING_M", "VllmFusedMoE", "batch_table", "covering", "ms_to_tune",
           "nearest", "shipped_table", "vllm_default_config", "vllm_kernel_source_hash", "vllm_picker"]
