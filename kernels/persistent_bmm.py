"""The batched form of tuner's persistent TMA GEMM (kernels/persistent_mm.py): out[b] = A[b] @ B[b].

The programs walk every (batch, tile) pair in one persistent loop, tiles grouped within a batch.
A, B and C are read and written through 3-D device-side tensor descriptors [BATCH, rows, cols],
which take both layouts bmm meets (kernels/bmm.py): contiguous batches, and F.linear on a
sequence-first input, where A[b] = X[:, b, :] (row stride BATCH x K) and B is one N x K weight for
every b. A shared weight (batch stride 0) gets a 2-D descriptor: TMA is not asked for a zero stride.
Runs on the GPU and under TRITON_INTERPRET=1.

A shared weight's products with fewer rows than products (`batch_as_rows`) are walked the other way
round: out[:, i] = A[:, i] @ W, BATCH rows for each of the M products (C through a strided
descriptor). MiniCPM-o's resampler projects 1024 positions x 10 slices this way when its weights do
not require grad (kernels/bmm.py): as bmm each position is a 10-row product, padded to a 16-row
tile, and W (3584 x 3584) is read once per position from L2: 2.73-2.81 ms for FlagGems' tuned
kernel and 2.78-2.89 ms for cuBLAS's bmm on the H200, 0.04-0.35 ms walked this way
(results/gemm_h200/session12/bmm).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.direct_launch import DirectLaunch
from kernels.persistent_mm import Unsupported, _scratch, _tile_coords, num_programs, sm_count_of, tma_reason


@triton.jit
def persistent_bmm_kernel(
    A, B, C,
    BATCH, M, N, K,
    stride_ab, stride_am, stride_bb, stride_b, stride_cb, stride_cm,
    NUM_PROGRAMS,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    B_NK: tl.constexpr, B_SHARED: tl.constexpr, IEEE: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr, FLATTEN: tl.constexpr,
):
    dtype = C.dtype.element_ty
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    tiles = num_pid_m * num_pid_n
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_pid_in_group = GROUP_M * num_pid_n

    a_desc = tl.make_tensor_descriptor(A, shape=[BATCH, M, K], strides=[stride_ab, stride_am, 1],
                                       block_shape=[1, BLOCK_M, BLOCK_K])
    if B_SHARED:
        if B_NK:
            b_desc = tl.make_tensor_descriptor(B, shape=[N, K], strides=[stride_b, 1], block_shape=[BLOCK_N, BLOCK_K])
        else:
            b_desc = tl.make_tensor_descriptor(B, shape=[K, N], strides=[stride_b, 1], block_shape=[BLOCK_K, BLOCK_N])
    else:
        if B_NK:
            b_desc = tl.make_tensor_descriptor(B, shape=[BATCH, N, K], strides=[stride_bb, stride_b, 1],
                                               block_shape=[1, BLOCK_N, BLOCK_K])
        else:
            b_desc = tl.make_tensor_descriptor(B, shape=[BATCH, K, N], strides=[stride_bb, stride_b, 1],
                                               block_shape=[1, BLOCK_K, BLOCK_N])
    c_desc = tl.make_tensor_descriptor(C, shape=[BATCH, M, N], strides=[stride_cb, stride_cm, 1],
                                       block_shape=[1, BLOCK_M, BLOCK_N])

    for tile_id in tl.range(tl.program_id(0), BATCH * tiles, NUM_PROGRAMS, flatten=FLATTEN,
                            warp_specialize=WARP_SPECIALIZE):
        bid = tile_id // tiles
        pid_m, pid_n = _tile_coords(tile_id % tiles, num_pid_in_group, num_pid_m, GROUP_M)
        offs_m = pid_m * BLOCK_M
        offs_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in range(k_tiles):
            offs_k = ki * BLOCK_K
            a = a_desc.load([bid, offs_m, offs_k]).reshape(BLOCK_M, BLOCK_K)
            if B_SHARED:
                if B_NK:
                    b = b_desc.load([offs_n, offs_k]).T
                else:
                    b = b_desc.load([offs_k, offs_n])
            else:
                if B_NK:
                    b = b_desc.load([bid, offs_n, offs_k]).reshape(BLOCK_N, BLOCK_K).T
                else:
                    b = b_desc.load([bid, offs_k, offs_n]).reshape(BLOCK_K, BLOCK_N)
            if IEEE:
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
        c_desc.store([bid, offs_m, offs_n], acc.to(dtype).reshape(1, BLOCK_M, BLOCK_N))


KERNEL_FUNCTIONS = (persistent_bmm_kernel, _tile_coords)  # what a tuned config's timings belong to (jit_source_hash)


def b_operand(b: torch.Tensor) -> tuple[bool, bool, int, int] | None:
    """(B_NK, B_SHARED, batch stride, row stride of the descriptor) for B [BATCH, K, N], or None:
    B_NK when each B[b] is an N x K weight seen through .t(); B_SHARED when one weight serves every
    batch (stride 0, as F.linear's expanded weight)."""
    sb, sk, sn = b.stride()
    K, N = b.shape[1], b.shape[2]
    if sk == 1 and sn >= K:
        return True, sb == 0, sb, sn
    if sn == 1 and sk >= N:
        return False, sb == 0, sb, sk
    return None


def batch_as_rows(batch: int, M: int, shared: bool) -> bool:
    """Whether the kernel walks one shared weight's `batch` products of M rows as M products of
    `batch` rows (more rows a tile, the weight read once a tile of them, not once a product)."""
    return shared and batch > M


def unsupported(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> str | None:
    """Why the batched kernel cannot take these tensors as they are (TMA's layout rules), or None."""
    if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        return "needs A [BATCH, M, K] and B [BATCH, K, N]"
    layout = b_operand(b)
    if a.stride(2) != 1 or layout is None:
        return "needs A with contiguous rows and B as K x N rows or an N x K weight's .t() per batch"
    if not out.is_contiguous() or out.dtype != a.dtype:
        return "needs a contiguous output in the inputs' dtype"
    return tma_reason(a, b, [a, b, out], [a.stride(0), a.stride(1), layout[2], layout[3], out.stride(1)])


persistent_bmm_direct = DirectLaunch(persistent_bmm_kernel)  # later launches skip Triton's dispatch


def persistent_bmm(a: torch.Tensor, b: torch.Tensor, config: dict, out: torch.Tensor | None = None) -> torch.Tensor:
    """out[b] = A[b] @ B[b] with `config` (BLOCK_M/N/K, GROUP_M, OCCUPANCY, WARP_SPECIALIZE, FLATTEN,
    num_warps, num_stages); raises Unsupported for tensors TMA cannot read as they are."""
    batch, M, K = a.shape
    N = b.shape[2]
    c = out if out is not None else torch.empty((batch, M, N), dtype=a.dtype, device=a.device)
    reason = unsupported(a, b, c)
    if reason:
        raise Unsupported(f"persistent_bmm {tuple(a.shape)} @ {tuple(b.shape)}: {reason}")
    b_nk, shared, stride_bb, stride_b = b_operand(b)
    a_walk, c_walk = a, c
    if batch_as_rows(batch, M, shared):
        a_walk, c_walk, batch, M = a.transpose(0, 1), c.transpose(0, 1), M, batch
    programs = num_programs(M, N, config, sm_count_of(a.device), batch)
    triton.set_allocator(_scratch)
    persistent_bmm_direct[(programs,)](
        a_walk, b, c_walk, batch, M, N, K, a_walk.stride(0), a_walk.stride(1), stride_bb, stride_b,
        c_walk.stride(0), c_walk.stride(1), programs,
        BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"], BLOCK_K=config["BLOCK_K"],
        GROUP_M=config.get("GROUP_M", 8), B_NK=b_nk, B_SHARED=shared, IEEE=a.dtype == torch.float32,
        WARP_SPECIALIZE=bool(config.get("WARP_SPECIALIZE", 0)), FLATTEN=bool(config.get("FLATTEN", 0)),
        num_warps=config.get("num_warps", 4), num_stages=config.get("num_stages", 3),
    )
    return c
