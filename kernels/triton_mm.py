"""The project's own Triton GEMM with split-K.

A decode-size GEMM (M <= 16) has too few output tiles to fill 132 SMs; splitting K across
programs multiplies the parallelism, each split writes an fp32 partial, and a second small
kernel sums the partials and casts (deterministic, no atomics, no zero-fill). SPLIT_K=1 is a
plain grouped tiled GEMM. A bias (addmm as nn.Linear calls it: beta = alpha = 1) is added in fp32
where the output is written: by the reduce kernel after the sum, or by the GEMM itself at
SPLIT_K=1, so every split adds it once. Runs on the GPU and under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.direct_launch import DirectLaunch, cdiv
from kernels.mm import FUSED_SPLITK_MODULE, own_module


@triton.jit
def mm_splitk_kernel(
    A, B, C, WS, BIAS,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn, stride_bias,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr,
    IEEE: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    # grouped ordering: programs sharing B columns run together (L2 reuse)
    width = GROUP_M * grid_n
    group_id = pid // width
    group_size = min(grid_m - group_id * GROUP_M, GROUP_M)
    pid_m = group_id * GROUP_M + (pid % group_size)
    pid_n = (pid % width) // group_size

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # wrap out-of-range rows/cols onto valid addresses; their results are masked at the store
    ram = tl.max_contiguous(tl.multiple_of(rm % M, BLOCK_M), BLOCK_M)
    rbn = tl.max_contiguous(tl.multiple_of(rn % N, BLOCK_N), BLOCK_N)

    k_per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    rk = k_start + tl.arange(0, BLOCK_K)
    a_ptr = A + ram[:, None] * stride_am + rk[None, :] * stride_ak
    b_ptr = B + rk[:, None] * stride_bk + rbn[None, :] * stride_bn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_start, k_end, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptr)
            b = tl.load(b_ptr)
        else:
            in_k = (k + tl.arange(0, BLOCK_K)) < k_end
            a = tl.load(a_ptr, mask=in_k[None, :], other=0.0)
            b = tl.load(b_ptr, mask=in_k[:, None], other=0.0)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        a_ptr += BLOCK_K * stride_ak
        b_ptr += BLOCK_K * stride_bk

    mask = (rm < M)[:, None] & (rn < N)[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(BIAS + rn * stride_bias, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        c_ptr = C + rm[:, None] * stride_cm + rn[None, :] * stride_cn
        tl.store(c_ptr, acc.to(C.dtype.element_ty), mask=mask)
    else:
        ws_ptr = WS + pid_k.to(tl.int64) * M * N + rm[:, None].to(tl.int64) * N + rn[None, :]
        tl.store(ws_ptr, acc, mask=mask)


@triton.jit
def splitk_reduce_kernel(WS, C, BIAS, M, N, stride_cm, stride_cn, stride_bias,
                         SPLIT_K: tl.constexpr, BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M * N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(WS + s * M * N + offs, mask=mask, other=0.0)
    m = offs // N
    n = offs % N
    if HAS_BIAS:
        acc += tl.load(BIAS + n * stride_bias, mask=mask, other=0.0).to(tl.float32)
    tl.store(C + m * stride_cm + n * stride_cn, acc.to(C.dtype.element_ty), mask=mask)


REDUCE_BLOCK = 1024


KERNEL_FUNCTIONS = (mm_splitk_kernel, splitk_reduce_kernel)  # what a tuned config's timings belong to (jit_source_hash)


def _launch_kwargs(M: int, N: int, K: int, is_fp32: bool, config: dict, has_bias: bool = False) -> dict:
    bk, split_k = config["BLOCK_K"], config.get("SPLIT_K", 1)
    return dict(
        BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"], BLOCK_K=bk,
        GROUP_M=config.get("GROUP_M", 1), SPLIT_K=split_k, EVEN_K=K % (bk * split_k) == 0,
        IEEE=is_fp32, HAS_BIAS=has_bias, num_warps=config.get("num_warps", 4), num_stages=config.get("num_stages", 3),
    )


def operands(a: torch.Tensor, b: torch.Tensor, config: dict, out: torch.Tensor | None,
             bias: torch.Tensor | None) -> tuple:
    """(M, N, K, C, the fp32 workspace of the splits' partials (C itself at SPLIT_K=1), the bias
    argument and its stride) for a split-K launch; ValueError for shapes that do not fit."""
    M, K = a.shape
    K2, N = b.shape
    if K != K2:
        raise ValueError(f"incompatible shapes {tuple(a.shape)} @ {tuple(b.shape)}")
    if bias is not None and tuple(bias.shape) != (N,):
        raise ValueError(f"the bias must have shape ({N},), got {tuple(bias.shape)}")
    c = out if out is not None else torch.empty((M, N), dtype=a.dtype, device=a.device)
    split_k = config.get("SPLIT_K", 1)
    ws = torch.empty((split_k, M, N), dtype=torch.float32, device=a.device) if split_k > 1 else c
    bias_arg, stride_bias = (bias, bias.stride(0)) if bias is not None else (c, 0)
    return M, N, K, c, ws, bias_arg, stride_bias


mm_splitk_direct = DirectLaunch(mm_splitk_kernel)  # later launches skip Triton's dispatch
splitk_reduce_direct = DirectLaunch(splitk_reduce_kernel)  # later launches skip Triton's dispatch


def splitk_mm(a: torch.Tensor, b: torch.Tensor, config: dict, out: torch.Tensor | None = None,
              bias: torch.Tensor | None = None) -> torch.Tensor:
    """C = A @ B (+ bias[N] broadcast over the rows) with `config` (BLOCK_M/N/K, GROUP_M, SPLIT_K,
    num_warps, num_stages; FUSED_REDUCE=1: the partials summed in the same launch, by
    kernels/splitk_fused.py)."""
    if own_module(config | {"variant": "splitk"}) == FUSED_SPLITK_MODULE:  # the predicate of the records' hash
        from kernels.splitk_fused import fused_splitk_mm

        return fused_splitk_mm(a, b, config, out=out, bias=bias)
    M, N, K, c, ws, bias_arg, stride_bias = operands(a, b, config, out, bias)
    split_k = config.get("SPLIT_K", 1)
    grid = (cdiv(M, config["BLOCK_M"]) * cdiv(N, config["BLOCK_N"]), split_k)
    mm_splitk_direct[grid](
        a, b, c, ws, bias_arg, M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1), stride_bias,
        **_launch_kwargs(M, N, K, a.dtype == torch.float32, config, bias is not None),
    )
    if split_k > 1:
        splitk_reduce_direct[(cdiv(M * N, REDUCE_BLOCK),)](
            ws, c, bias_arg, M, N, c.stride(0), c.stride(1), stride_bias,
            SPLIT_K=split_k, BLOCK=REDUCE_BLOCK, HAS_BIAS=bias is not None, num_warps=4,
        )
    return c


def warmup_call(key: tuple, dtype: str, config: dict) -> tuple:
    """(torch dtype, SPLIT_K, the strides a call of key passes: A's, B's (BT=1: an N x K weight's
    .t()), C's) for a split-K kernel's warmup: Triton specialises on dtypes, integer values and
    pointer alignment, which its warmup takes as plain values."""
    M, N, K, bt = key
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    stride_bk, stride_bn = (1, K) if bt else (N, 1)
    return dt, config.get("SPLIT_K", 1), (K, 1, stride_bk, stride_bn, N, 1)


def splitk_warmup(key: tuple, dtype: str, config: dict) -> None:
    """Compile `config` for key (M, N, K, BT) without launching."""
    M, N, K, _ = key
    dt, split_k, strides = warmup_call(key, dtype, config)
    mm_splitk_kernel.warmup(
        dt, dt, dt, torch.float32 if split_k > 1 else dt, dt, M, N, K, *strides, 0,
        grid=(1, split_k), **_launch_kwargs(M, N, K, dt == torch.float32, config),
    )
    if split_k > 1:
        splitk_reduce_kernel.warmup(
            torch.float32, dt, dt, M, N, N, 1, 0, SPLIT_K=split_k, BLOCK=REDUCE_BLOCK, HAS_BIAS=False,
            num_warps=4, grid=(1,),
        )
