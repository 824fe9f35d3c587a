"""The persistent TMA GEMM on descriptors built on the host: HOST_DESC=1 of the persistent variant.

kernels/persistent_mm.py builds its three tensor descriptors in every program
(tl.make_tensor_descriptor: a 128-byte tensor map written to global scratch and fenced before the
first load). On the H200 (results/gemm_h200/session9, desc_probe.jsonl) the same tile loop on
descriptors the host built (triton.tools.tensor_descriptor, passed by value as kernel parameters,
as FlagGems' Hopper mm and Triton's tutorial 09 do) took 0.82-0.99x its time, bit for bit the
same result: 1.7-2.1 us a launch, 6-18% of the 9-42 us addmm keys, 1.4% at o M=4096. A kernel of
its own, so the timings stored for persistent_mm_kernel keep their source hash; the search picks
per key. A CUDA graph keeps the descriptors as it keeps pointers: the tensors' addresses are the
capture's.

Same operands, layouts, bias epilogue and knobs as persistent_mm (B an N x K weight's .t() or K x
N rows); runs on the GPU and under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.direct_launch import DirectLaunch
from kernels.persistent_mm import (Unsupported, _launch_kwargs, _tile_coords, b_layout, num_programs, sm_count_of,
                                   unsupported)


@triton.jit
def persistent_host_mm_kernel(
    a_desc, b_desc, c_desc, BIAS,
    M, N, K,
    NUM_PROGRAMS,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    B_NK: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr, FLATTEN: tl.constexpr, EPILOGUE_SUBTILE: tl.constexpr,
):
    dtype = c_desc.dtype
    start_pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_tiles = num_pid_m * num_pid_n
    num_pid_in_group = GROUP_M * num_pid_n

    tile_id_c = start_pid - NUM_PROGRAMS  # the epilogue's own counter, as in persistent_mm_kernel
    for tile_id in tl.range(start_pid, num_tiles, NUM_PROGRAMS, flatten=FLATTEN, warp_specialize=WARP_SPECIALIZE):
        pid_m, pid_n = _tile_coords(tile_id, num_pid_in_group, num_pid_m, GROUP_M)
        offs_m = pid_m * BLOCK_M
        offs_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in range(k_tiles):
            offs_k = ki * BLOCK_K
            a = a_desc.load([offs_m, offs_k])
            if B_NK:
                b = b_desc.load([offs_n, offs_k]).T
            else:
                b = b_desc.load([offs_k, offs_n])
            if IEEE:
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)

        tile_id_c += NUM_PROGRAMS
        pid_m, pid_n = _tile_coords(tile_id_c, num_pid_in_group, num_pid_m, GROUP_M)
        offs_cm = pid_m * BLOCK_M
        offs_cn = pid_n * BLOCK_N
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


# what a tuned config's timings belong to (jit_source_hash)
KERNEL_FUNCTIONS = (persistent_host_mm_kernel, _tile_coords)


def host_reason(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, bias: torch.Tensor | None) -> str | None:
    """Why descriptors built on the host cannot take these tensors: what TMA cannot read as it is
    (unsupported), or an empty dimension (TensorDescriptor asserts every one positive; the kernels
    on their own descriptors run those)."""
    return unsupported(a, b, c, bias) or ("needs non-empty operands" if 0 in (*a.shape, b.shape[1]) else None)


def operand_descriptors(a: torch.Tensor, b: torch.Tensor, b_nk: bool, config: dict) -> tuple:
    """A's and B's descriptors of the config's blocks; with B_NK, B's is the N x K weight's (b.t()
    undoes the transposed view), as the kernels build on the device."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    bm, bn, bk = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
    b_desc = TensorDescriptor.from_tensor(b.t(), [bn, bk]) if b_nk else TensorDescriptor.from_tensor(b, [bk, bn])
    return TensorDescriptor.from_tensor(a, [bm, bk]), b_desc


persistent_host_mm_direct = DirectLaunch(persistent_host_mm_kernel)  # later launches skip Triton's dispatch


def persistent_host_mm(a: torch.Tensor, b: torch.Tensor, config: dict, out: torch.Tensor | None = None,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """C = A @ B (+ bias), persistent_mm's contract (Unsupported for tensors TMA cannot read as
    they are) on descriptors built here."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    M, K = a.shape
    N = b.shape[1]
    c = out if out is not None else torch.empty((M, N), dtype=a.dtype, device=a.device)
    reason = host_reason(a, b, c, bias)
    if reason:
        raise Unsupported(f"persistent_host_mm {tuple(a.shape)} @ {tuple(b.shape)}: {reason}")
    b_nk, _ = b_layout(b)
    c_block = [config["BLOCK_M"], config["BLOCK_N"] // 2 if config.get("EPILOGUE_SUBTILE") else config["BLOCK_N"]]
    programs = num_programs(M, N, config, sm_count_of(a.device))
    persistent_host_mm_direct[(programs,)](
        *operand_descriptors(a, b, b_nk, config), TensorDescriptor.from_tensor(c, c_block),
        bias if bias is not None else c, M, N, K, programs,
        **_launch_kwargs(config, b_nk, bias is not None, a.dtype == torch.float32),
    )
    return c
