"""The split-K GEMM of kernels/triton_mm.py with its reduction in the same launch.

Why: split-K won the decode keys whose few output tiles leave most of the H200's 132 SMs idle (o
and down at M = 1..32, qkv at M = 8..32: results/gemm_h200/session7), but it launches twice: the
GEMM writes one fp32 partial per split and a second kernel sums them. Inside a CUDA graph the
second launch and the drain before it are a fixed cost on a 10-40 us GEMM (o at M=1: 11.3 us,
weights read at 54% of the copy bandwidth; the issue's target is 90%).

How: every program runs triton_mm's kernel unchanged (the same partial, the same workspace), then
raises its tile's count; the program that raises it last sums the tile's partials in split order
0, 1, ... (the reduce kernel's order: the result is the two-kernel split-K's bit for bit), adds
the bias, writes the tile and lowers the count to zero again for the next call. No program waits
on another, so nothing can deadlock however the programs are scheduled; under TRITON_INTERPRET=1
the programs run one after the other and the last split of each tile is its last.

The counts live in one zeroed buffer per device reused by every call (self-cleaning), so two
calls must not run at once on two streams of one device (vLLM runs its GEMMs on one stream), and
its first use must come before a CUDA-graph capture (the router's warm-up and the search's first,
uncaptured call do that): allocated inside a capture it would belong to the graph's memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.direct_launch import DirectLaunch, cdiv
from kernels.mm import FUSED_COUNT_SLOTS as COUNT_SLOTS
from kernels.persistent_mm import Unsupported, _tile_coords
from kernels.triton_mm import _launch_kwargs, mm_splitk_kernel, operands, warmup_call


@triton.jit
def mm_splitk_fused_kernel(
    A, B, C, WS, BIAS, COUNTS,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn, stride_bias,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr,
    IEEE: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    mm_splitk_kernel(A, B, C, WS, BIAS, M, N, K,
                     stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn, stride_bias,
                     BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, SPLIT_K, EVEN_K, IEEE, HAS_BIAS)
    if SPLIT_K > 1:
        tile = tl.program_id(0)
        tl.debug_barrier()  # every thread's partial stored before the count is raised (release)
        arrived = tl.atomic_add(COUNTS + tile, 1, sem="acq_rel")
        if arrived == SPLIT_K - 1:  # the tile's last split: the others' partials are visible
            grid_n = tl.cdiv(N, BLOCK_N)
            pid_m, pid_n = _tile_coords(tile, GROUP_M * grid_n, tl.cdiv(M, BLOCK_M), GROUP_M)
            rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            mask = (rm < M)[:, None] & (rn < N)[None, :]
            at = rm[:, None].to(tl.int64) * N + rn[None, :]
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in tl.static_range(SPLIT_K):
                # .cg: from L2, where the other programs' partials are (not a stale L1 line)
                acc += tl.load(WS + s * M * N + at, mask=mask, other=0.0, cache_modifier=".cg")
            if HAS_BIAS:
                acc += tl.load(BIAS + rn * stride_bias, mask=rn < N, other=0.0).to(tl.float32)[None, :]
            tl.store(C + rm[:, None] * stride_cm + rn[None, :] * stride_cn, acc.to(C.dtype.element_ty), mask=mask)
            tl.atomic_xchg(COUNTS + tile, 0, sem="relaxed")


KERNEL_FUNCTIONS = (mm_splitk_fused_kernel, mm_splitk_kernel, _tile_coords)  # the timings' identity

_counts_by_device: dict[torch.device, torch.Tensor] = {}


def counts_for(device: torch.device) -> torch.Tensor:
    """The device's zeroed tile counts, allocated on first use (see the module's note on graphs)."""
    counts = _counts_by_device.get(device)
    if counts is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise Unsupported("fused split-K's tile counts cannot be allocated inside a CUDA-graph capture: "
                              "run the GEMM once before capturing")
        counts = _counts_by_device[device] = torch.zeros(COUNT_SLOTS, dtype=torch.int32, device=device)
    return counts


mm_splitk_fused_direct = DirectLaunch(mm_splitk_fused_kernel)  # later launches skip Triton's dispatch


def fused_splitk_mm(a: torch.Tensor, b: torch.Tensor, config: dict, out: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """C = A @ B (+ bias[N]) as splitk_mm computes it, bit for bit, in one launch."""
    tiles = cdiv(a.shape[0], config["BLOCK_M"]) * cdiv(b.shape[-1], config["BLOCK_N"])
    if tiles > COUNT_SLOTS:
        raise ValueError(f"{tiles} output tiles: the fused split-K counts {COUNT_SLOTS} at most")
    M, N, K, c, ws, bias_arg, stride_bias = operands(a, b, config, out, bias)
    split_k = config.get("SPLIT_K", 1)
    mm_splitk_fused_direct[(tiles, split_k)](
        a, b, c, ws, bias_arg, counts_for(a.device), M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1), stride_bias,
        **_launch_kwargs(M, N, K, a.dtype == torch.float32, config, bias is not None),
    )
    return c


def fused_splitk_warmup(key: tuple, dtype: str, config: dict) -> None:
    """Compile `config` for key (M, N, K, BT) without launching (as triton_mm.splitk_warmup)."""
    M, N, K, _ = key
    dt, split_k, strides = warmup_call(key, dtype, config)
    mm_splitk_fused_kernel.warmup(
        dt, dt, dt, torch.float32 if split_k > 1 else dt, dt, torch.int32, M, N, K, *strides, 0,
        grid=(1, split_k), **_launch_kwargs(M, N, K, dt == torch.float32, config),
    )
