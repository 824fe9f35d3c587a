"""Tunable fp8 GEMM with per-tensor scales (aten::_scaled_mm; vLLM's fp8 linear layers).

Key (M, N, K): C[M,N] (bf16) = (A[M,K] * scale_a) @ (W[N,K] * scale_b).T with A and the nn.Linear
weight W in float8_e4m3fn and one fp32 scale each, as `torch._scaled_mm(a, w.t(), scale_a,
scale_b, out_dtype=torch.bfloat16)` and vLLM's `--quantization fp8` linear layers
(`cutlass_scaled_mm`, per-tensor scales) compute it. Inputs are quantized once when they are made
(amax / 448, e4m3's largest value); the reference is the exact product of the quantized values.

Variants (a search dimension):
- persistent: kernels/fp8_mm.py, tuner's persistent TMA GEMM for fp8 (the bf16 persistent
  kernel's loop and knobs: OCCUPANCY, WARP_SPECIALIZE, FLATTEN, EPILOGUE_SUBTILE; and PRECISE_ACC,
  fp32 sums per K tile instead of the wgmma's reduced-precision one over all of K); on keys whose
  rows TMA can read (K and N multiples of 16 bytes). The only variant on the CPU (interpreter).
- fg_smm: FlagGems' `_pertensor_or_pertoken_smm_kernel` (flag_gems.fused.cutlass_scaled_mm,
  its Triton stand-in for vLLM's CUTLASS op), launched with an explicit config; GPU only. Its own
  autotuner picks among 3 tiles: the untuned baseline.
Baselines: native = torch._scaled_mm (cuBLASLt, fp32 accumulation), native_fast_accum (the same
with use_fast_accum=True: Triton's fp8 dot accumulates in the wgmma's own precision, so this is
the like-for-like cuBLAS time), untuned = FlagGems' cutlass_scaled_mm.

Serving: no injector puts these winners into vLLM yet (COVERAGE.no_injector).
"""

from __future__ import annotations

import math
from typing import Mapping

from kernels.base import (Config, Coverage, Inputs, Kernel, KernelInputError, Key, Runner, jit_source_hash,
                          next_pow2, precompile_by_running)
from kernels.mm import (HOST_DESC_KNOB, KNOBS, LAUNCH_SPACE, PERSISTENT_PARAMS, PERSISTENT_PINNED, SMEM_BY_ARCH,
                        SMEM_DEFAULT, TILE_SPACE, VLLM_M, persistent_reason, reference_product, vllm_shard_keys)

FP8 = "fp8_w8a8"  # vLLM's name (fused_moe's too): e4m3 weights and activations, per-tensor scales
E4M3_MAX = 448.0
FG_MODULE = "flag_gems.fused.cutlass_scaled_mm"
VARIANTS = ("fg_smm", "persistent")
MIN_BLOCK_K = 32  # Hopper's fp8 wgmma consumes K in steps of 32
# the fp8 kernel's knobs: the persistent kernel's (it has no host-descriptor form), and how the K
# sum is accumulated (kernels/fp8_mm.py)
FP8_TAKES = tuple(k for k in KNOBS["persistent"] if k != HOST_DESC_KNOB)
FP8_PARAMS = {**{k: v for k, v in PERSISTENT_PARAMS.items() if k in FP8_TAKES}, "PRECISE_ACC": (0, 1)}
FP8_PINNED = {**{k: v for k, v in PERSISTENT_PINNED.items() if k in FP8_TAKES}, "PRECISE_ACC": 0}
# the linear layers vLLM quantizes with --quantization fp8 (lm_head stays bf16); qkv carries a bias,
# which the kernel takes and the key leaves out (one add per output element)
FP8_LAYERS = ("qkv", "o", "gate_up", "down")

COVERAGE = Coverage(
    aten_ops={"aten::_scaled_mm": "mm"}, op_patterns=("cutlass_scaled_mm",), profile_keys=True,
    no_injector="no serve-time path routes vLLM's cutlass_scaled_mm or aten::_scaled_mm to tuned fp8 "
                "kernels yet: its winners are measured, not served",
)


def fp8_starts(M: int) -> list[Config]:
    """The persistent fp8 kernel's warm start: Triton's tutorial 09 runs fp8 at 128x256x128 (a
    128-byte K row per tile row, as 64 is for bf16), the 128x128 wgmma tile, and skinny decode tiles;
    one of each kind with PRECISE_ACC, so a short search measures both accumulations."""
    if M >= 256:
        return [dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=3, EPILOGUE_SUBTILE=1),
                dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=4),
                dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=4, PRECISE_ACC=1),
                dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=4, WARP_SPECIALIZE=1)]
    bm = 16 if M <= 16 else (32 if M <= 32 else 64)  # never over the padded M
    return [dict(BLOCK_M=bm, BLOCK_N=64, BLOCK_K=256, GROUP_M=1, num_warps=4, num_stages=4),
            dict(BLOCK_M=bm, BLOCK_N=64, BLOCK_K=256, GROUP_M=1, num_warps=4, num_stages=4, PRECISE_ACC=1),
            dict(BLOCK_M=bm, BLOCK_N=128, BLOCK_K=128, GROUP_M=1, num_warps=4, num_stages=4)]


def tma_rows(key: Key) -> bool:
    """Whether TMA can read the key's rows: A's and W's K bytes (fp8: 1 per element) and C's N
    bf16 elements multiples of 16 bytes."""
    _, N, K = key
    return K % 16 == 0 and N % 8 == 0


class ScaledMM(Kernel):
    name = "scaled_mm"
    description = "fp8 GEMM, per-tensor scales (aten::_scaled_mm): own persistent TMA kernel + FlagGems'"
    key_names = ("M", "N", "K")
    key_help = {"M": "rows of A: tokens in the batch", "N": "output features (rows of the N x K fp8 weight)",
                "K": "input features (the inner dimension)"}
    dtypes = (FP8,)
    source_modules = ("kernels.fp8_mm", FG_MODULE)

    def presets(self) -> Mapping[str, list[Key]]:
        return {f"vllm-fp8-tp{tp}": [k[:3] for k in vllm_shard_keys(tp, FP8_LAYERS, VLLM_M)] for tp in (1, 2, 4, 8)}

    def flops(self, key: Key) -> float:
        M, N, K = key
        return 2.0 * M * N * K

    def bytes_per_set(self, key: Key, dtype: str) -> int:
        M, N, K = key
        return M * K + N * K + 2 * M * N

    def tolerance(self, dtype: str) -> float:
        """The inputs are fp8 already; the reference is their exact product, so only the bf16
        output's rounding and the accumulation order remain: bf16's own bounds."""
        return super().tolerance("bf16")

    def elementwise_tolerance(self, dtype: str) -> float:
        return super().elementwise_tolerance("bf16")

    # ---- search space -------------------------------------------------------------------
    def space(self, key: Key, dtype: str, device: str) -> dict[str, tuple]:
        if device == "cpu":
            variants: tuple = ("persistent",)
        else:
            variants = ("fg_smm", "persistent") if tma_rows(key) else ("fg_smm",)
        return {"variant": variants, **TILE_SPACE, **LAUNCH_SPACE, **FP8_PARAMS}

    def canonical(self, key: Key, config: Config) -> Config:
        c = dict(config)
        if c["variant"] == "fg_smm":  # FlagGems' kernel walks tiles row-major, without the knobs
            return c | FP8_PINNED | {"GROUP_M": 1}
        if math.ceil(key[0] / c["BLOCK_M"]) == 1:
            c["GROUP_M"] = 1  # one row of tiles: grouping cannot change the order
        return c

    def invalid_reason(self, key: Key, config: Config, dtype: str, device: str, arch: int = 9) -> str | None:
        M, N, K = key
        variant = config["variant"]
        bm, bn, bk = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
        warps, stages = config["num_warps"], config["num_stages"]
        if dtype != FP8:
            return f"scaled_mm runs {FP8}, not {dtype}"
        if variant not in self.space(key, dtype, device)["variant"]:
            return f"variant {variant} does not serve this key on {device}"
        fg = variant == "fg_smm"
        # FlagGems' autotuner picks among 64x64x256, 64x128x128 and 128x128x128 at every M: each stays
        # reachable, so its untuned pick can be the warm start
        for name, block, size, floor in (("BLOCK_M", bm, M, 128 if fg else 16), ("BLOCK_N", bn, N, 128 if fg else 32),
                                         ("BLOCK_K", bk, K, 256 if fg else MIN_BLOCK_K)):
            if block > max(floor, next_pow2(size)):
                return f"{name}={block} exceeds the padded {name[-1]} ({next_pow2(size)})"
        smem = (bm + bn) * bk * stages  # fp8 tiles: one byte an element
        if not fg:
            smem += bm * bn * 2 // (2 if config.get("EPILOGUE_SUBTILE") else 1)  # the bf16 C tile TMA stores
        limit = SMEM_BY_ARCH.get(arch, SMEM_DEFAULT) if device == "cuda" else SMEM_BY_ARCH[9]
        if smem > limit:
            return f"needs {smem} B of shared memory, the limit is {limit}"
        if not fg and (why := persistent_reason(config, smem, limit, arch)):
            return why
        if warps == 2 and bm * bn > 64 * 64:
            return "2 warps for a tile over 64x64"
        if bm * bn > 256 * 32 * warps:
            return f"a {bm}x{bn} fp32 accumulator over {warps} warps needs > 256 registers per thread"
        return None

    # ---- running ------------------------------------------------------------------------
    def source_hash(self, config: Config | None = None) -> str:
        """sha256 of the Triton source of the kernel this config runs."""
        import hashlib

        variant = (config or {}).get("variant")
        if variant == "persistent":
            return jit_source_hash("kernels.fp8_mm")
        if variant == "fg_smm":
            from kernels.flaggems_ops import jit_function

            return hashlib.sha256(jit_function(_fg_module()._pertensor_or_pertoken_smm_kernel).src.encode()).hexdigest()
        return super().source_hash()

    def make_inputs(self, key: Key, dtype: str, device: str, n_sets: int, seed: int) -> Inputs:
        import torch

        M, N, K = key
        g = torch.Generator(device=device).manual_seed(seed)
        sets, outs = [], []
        for _ in range(n_sets):
            a, sa = quantize(torch.randn((M, K), generator=g, device=device))
            w, sw = quantize(torch.randn((N, K), generator=g, device=device))
            sets.append((a, w.t(), sa, sw))
            outs.append(torch.empty((M, N), device=device, dtype=torch.bfloat16))
        return Inputs(sets=sets, outs=outs)

    def reference(self, args: tuple):
        a, b, sa, sb = args
        out = reference_product(a, b)  # fp8 products are exact in fp32
        return out * (sa.to(out.dtype) * sb.to(out.dtype))

    def runner(self, key: Key, config: Config, dtype: str, device: str) -> Runner:
        variant = config["variant"]
        if variant == "persistent":
            from kernels.fp8_mm import fp8_mm

            cfg = dict(config)
            return lambda args, out: fp8_mm(*args, cfg, out=out)
        if variant == "fg_smm":
            if device != "cuda":
                raise KernelInputError("FlagGems' fp8 GEMM runs on an NVIDIA GPU only")
            return _fg_runner(config)
        raise KernelInputError(f"unknown scaled_mm variant {variant!r}")

    def precompile(self, key: Key, config: Config, dtype: str, device: str) -> None:
        precompile_by_running(self, key, config, dtype, device)

    def baselines(self, key: Key, dtype: str, device: str) -> dict[str, Runner]:
        import torch

        def native(fast: bool) -> Runner:
            return lambda args, out: torch._scaled_mm(args[0], args[1], scale_a=args[2], scale_b=args[3],
                                                      out_dtype=out.dtype, use_fast_accum=fast, out=out)

        runners: dict[str, Runner] = {"native": native(False)}
        if device == "cuda":
            fg = _fg_module()
            runners["native_fast_accum"] = native(True)
            runners["untuned"] = lambda args, out: fg.cutlass_scaled_mm(out, *args)
        return runners

    def starting_configs(self, key: Key, dtype: str, device: str) -> list[Config]:
        if device != "cuda" or "persistent" not in self.space(key, dtype, device)["variant"]:
            return []
        return [self.canonical(key, {"variant": "persistent", **FP8_PINNED, **c}) for c in fp8_starts(key[0])]

    def untuned_configs(self, key: Key, dtype: str, device: str) -> list[Config]:
        """The tile FlagGems' autotuner chose for this key (the untuned baseline has just run it;
        triton's Autotuner leaves it in `best_config`)."""
        if device != "cuda" or not fg_takes(key):
            return []  # FlagGems' entry refused the key: best_config is another key's
        cfg = getattr(_fg_module()._pertensor_or_pertoken_smm_kernel, "best_config", None)
        if cfg is None:
            return []
        kw = cfg.kwargs
        return [self.canonical(key, {"variant": "fg_smm", "BLOCK_M": kw["TILE_M"], "BLOCK_N": kw["TILE_N"],
                                     "BLOCK_K": kw["TILE_K"], "GROUP_M": 1, **FP8_PINNED,
                                     "num_warps": cfg.num_warps, "num_stages": cfg.num_stages})]


def fg_takes(key: Key) -> bool:
    """Whether FlagGems' cutlass_scaled_mm runs the key: it asserts the output's and the weight's
    row strides (in elements) to be multiples of 16."""
    _, N, K = key
    return N % 16 == 0 and K % 16 == 0


def quantize(x):
    """x as float8_e4m3fn with one fp32 scale (amax / 448): the per-tensor quantization vLLM's
    dynamic fp8 applies to activations."""
    import torch

    scale = (x.abs().amax().float() / E4M3_MAX).clamp(min=1e-12)
    return (x / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale


def _fg_module():
    """FlagGems' fp8 GEMM module as loaded (`flag_gems.fused` re-exports its function under the
    module's own name, so the module is reached by its path)."""
    import importlib

    importlib.import_module("flag_gems")
    return importlib.import_module(FG_MODULE)


def _fg_runner(config: Config) -> Runner:
    import triton
    import triton.language as tl

    from kernels.flaggems_ops import jit_function

    jit = jit_function(_fg_module()._pertensor_or_pertoken_smm_kernel)
    bm, bn, bk = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]

    def run(args, out):
        a, b, sa, sb = args
        M, K = a.shape
        N = b.shape[1]
        jit[(triton.cdiv(M, bm) * triton.cdiv(N, bn),)](
            out, a, b, sa, sb, None, M, N, K, triton.next_power_of_2(M),
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
            # as FlagGems' launcher decides (at M=1 one scale is also one per token): the same kernel
            ACC_DTYPE=tl.float32, TILE_M=bm, TILE_N=bn, TILE_K=bk, IS_PER_TOKEN_A=sa.numel() == M,
            IS_PER_TOKEN_B=sb.numel() == N,
            num_warps=config["num_warps"], num_stages=config["num_stages"],
        )
        return out

    return run
