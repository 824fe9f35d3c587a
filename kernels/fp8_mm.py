"""The project's persistent TMA GEMM for fp8 e4m3 operands with per-tensor scales (Hopper).

C (bf16) = (A * scale_a) @ (W * scale_b).T for A (M x K) and an N x K weight W, both
float8_e4m3fn, scale_a and scale_b one fp32 number each: what `torch._scaled_mm(a, w.t(),
scale_a, scale_b, out_dtype=torch.bfloat16)` (cuBLASLt) and vLLM's fp8 linear layers
(`cutlass_scaled_mm`, per-tensor scales) compute. The loop is the persistent GEMM's
(kernels/persistent_mm.py: resident programs over grouped tiles, device-side descriptors); fp8
differs in three ways, all from Hopper's fp8 wgmma: the weight is read K-major only (wgmma takes
fp8 B from shared memory K-major: the N x K weight tile, transposed in the dot, is exactly that),
a K step of at least 32 elements, and the two scales applied once in fp32 before the cast.
Hopper's fp8 wgmma accumulates in reduced precision (DeepSeek-V3 reports ~14 bits kept, errors
near 2% at K=4096): PRECISE_ACC=1 sums each K tile apart and adds it to the fp32 accumulator
(Triton's max_num_imprecise_acc=BLOCK_K), as cuBLAS does without use_fast_accum; 0 is the fast
path. The correctness check decides which a key may use. An
optional bias over N (vLLM's fp8 q/k/v projections carry one) is added after the scales.

Runs on the GPU and under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.persistent_mm import Unsupported, _scratch, _tile_coords, num_programs, sm_count_of, tma_misaligned

FP8 = torch.float8_e4m3fn
OUT_DTYPES = (torch.bfloat16, torch.float16)


@triton.jit
def fp8_mm_kernel(
    A, B, C, SCALE_A, SCALE_B, BIAS,
    M, N, K,
    stride_am, stride_bn, stride_cm,
    NUM_PROGRAMS,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    HAS_BIAS: tl.constexpr, WARP_SPECIALIZE: tl.constexpr, FLATTEN: tl.constexpr, EPILOGUE_SUBTILE: tl.constexpr,
    PRECISE_ACC: tl.constexpr,
):
    dtype = C.dtype.element_ty
    start_pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_tiles = num_pid_m * num_pid_n
    num_pid_in_group = GROUP_M * num_pid_n
    scale = tl.load(SCALE_A).to(tl.float32) * tl.load(SCALE_B).to(tl.float32)

    a_desc = tl.make_tensor_descriptor(A, shape=[M, K], strides=[stride_am, 1], block_shape=[BLOCK_M, BLOCK_K])
    b_desc = tl.make_tensor_descriptor(B, shape=[N, K], strides=[stride_bn, 1], block_shape=[BLOCK_N, BLOCK_K])
    c_desc = tl.make_tensor_descriptor(C, shape=[M, N], strides=[stride_cm, 1],
                                       block_shape=[BLOCK_M, BLOCK_N // 2 if EPILOGUE_SUBTILE else BLOCK_N])

    tile_id_c = start_pid - NUM_PROGRAMS
    for tile_id in tl.range(start_pid, num_tiles, NUM_PROGRAMS, flatten=FLATTEN, warp_specialize=WARP_SPECIALIZE):
        pid_m, pid_n = _tile_coords(tile_id, num_pid_in_group, num_pid_m, GROUP_M)
        offs_m = pid_m * BLOCK_M
        offs_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in range(k_tiles):
            offs_k = ki * BLOCK_K
            a = a_desc.load([offs_m, offs_k])
            b = b_desc.load([offs_n, offs_k])
            if PRECISE_ACC:  # each K tile's products summed apart, then added to acc in full fp32
                acc = tl.dot(a, b.T, acc, max_num_imprecise_acc=BLOCK_K)
            else:  # the wgmma accumulates the whole K in its own reduced precision (cuBLAS's fast accum)
                acc = tl.dot(a, b.T, acc)

        tile_id_c += NUM_PROGRAMS
        pid_m, pid_n = _tile_coords(tile_id_c, num_pid_in_group, num_pid_m, GROUP_M)
        offs_cm = pid_m * BLOCK_M
        offs_cn = pid_n * BLOCK_N
        acc = acc * scale
        if HAS_BIAS:
            rn = offs_cn + tl.arange(0, BLOCK_N)
            acc += tl.load(BIAS + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        if EPILOGUE_SUBTILE:
            halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
            acc0, acc1 = tl.split(halves)
            c_desc.store([offs_cm, offs_cn], acc0.to(dtype))
            c_desc.store([offs_cm, offs_cn + BLOCK_N // 2], acc1.to(dtype))
        else:
            c_desc.store([offs_cm, offs_cn], acc.to(dtype))


KERNEL_FUNCTIONS = (fp8_mm_kernel, _tile_coords)  # what a tuned config's timings belong to (jit_source_hash)


def unsupported(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                out: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> str | None:
    """Why this kernel cannot take these tensors as they are, or None: fp8 e4m3 A with contiguous
    rows, B the .t() of an N x K fp8 weight (torch._scaled_mm's column-major mat2), one-element
    fp32 scales, a bf16/fp16 output with contiguous rows, TMA's 16-byte rule."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        return "needs 2-D A (M x K) and B (K x N) with matching K"
    if a.dtype != FP8 or b.dtype != FP8:
        return "needs float8_e4m3fn A and B"
    if a.stride(1) != 1 or b.stride(0) != 1 or b.stride(1) < b.shape[0]:
        return "needs A with contiguous rows and B as an N x K weight's .t() (fp8 wgmma reads B K-major)"
    if any(s.numel() != 1 or s.dtype != torch.float32 for s in (scale_a, scale_b)):
        return "needs one fp32 scale per tensor (per-token or block scales are not this kernel's)"
    if out is not None and (out.stride(1) != 1 or out.dtype not in OUT_DTYPES):
        return "needs a bf16 or fp16 output with contiguous rows"
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != b.shape[1] or bias.stride(0) != 1):
        return "needs a contiguous 1-D bias of N"
    outs = [out] if out is not None else []  # fp8 rows: one byte an element
    return tma_misaligned([a, b, *outs], [a.stride(0), b.stride(1), *(o.stride(0) * o.element_size() for o in outs)])


def _launch_kwargs(config: dict, has_bias: bool) -> dict:
    return dict(
        BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"], BLOCK_K=config["BLOCK_K"],
        GROUP_M=config.get("GROUP_M", 8), HAS_BIAS=has_bias,
        WARP_SPECIALIZE=bool(config.get("WARP_SPECIALIZE", 0)), FLATTEN=bool(config.get("FLATTEN", 0)),
        EPILOGUE_SUBTILE=bool(config.get("EPILOGUE_SUBTILE", 0)), PRECISE_ACC=bool(config.get("PRECISE_ACC", 0)),
        num_warps=config.get("num_warps", 4), num_stages=config.get("num_stages", 3),
    )


def fp8_mm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor, config: dict,
           out: torch.Tensor | None = None, bias: torch.Tensor | None = None,
           out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """(A * scale_a) @ (B * scale_b) (+ bias) with `config` (BLOCK_M/N/K, GROUP_M, OCCUPANCY,
    WARP_SPECIALIZE, FLATTEN, EPILOGUE_SUBTILE, num_warps, num_stages), in torch._scaled_mm's
    argument order. Raises Unsupported for tensors it cannot take (`unsupported` says why)."""
    M, K = a.shape
    N = b.shape[1]
    c = out if out is not None else torch.empty((M, N), dtype=out_dtype, device=a.device)
    reason = unsupported(a, b, scale_a, scale_b, c, bias)
    if reason:
        raise Unsupported(f"fp8_mm {tuple(a.shape)} @ {tuple(b.shape)}: {reason}")
    programs = num_programs(M, N, config, sm_count_of(a.device))
    triton.set_allocator(_scratch)
    fp8_mm_kernel[(programs,)](
        a, b, c, scale_a, scale_b, bias if bias is not None else c, M, N, K,
        a.stride(0), b.stride(1), c.stride(0), programs,
        **_launch_kwargs(config, bias is not None),
    )
    return c
