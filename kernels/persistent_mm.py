"""The project's persistent TMA GEMM for Hopper, with an optional bias epilogue (addmm).

FlagGems' Hopper GEMM launches one program per output tile with host-built TMA descriptors; on
the H200 no config of its space reaches cuBLAS on most MiniCPM-o keys (tuned / cuBLAS 1.13x
geomean without lm_head, addmm 1.47-1.73x). This kernel is the shape cuBLAS-class GEMMs have
(Triton's tutorial 09 is the model): min(tiles, SMs x OCCUPANCY) programs stay resident and walk
the output tiles in grouped order (GROUP_M rows of tiles share B columns in L2), every load and
store goes through device-side tensor descriptors (tl.make_tensor_descriptor: no host-side
descriptor per call, so a CUDA graph replays it as is), and the K loop can be warp-specialised
(tl.range(warp_specialize=...)) and flattened with the tile loop.

B comes in either layout the engines pass: an N x K weight seen through `.t()` (nn.Linear, the
descriptor is built on the weight and the tile is transposed in the dot), or K x N rows. The
bias, when given, is 1-D over N and added in fp32 before the cast. Runs on the GPU and under
TRITON_INTERPRET=1 (which checks the descriptors' 16-byte stride rule too).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from kernels.direct_launch import DirectLaunch, cdiv
from kernels.mm import PERSISTENT_HOST_MODULE, own_module

TMA_ALIGN = 16  # bytes: TMA needs base addresses and every stride but the last a multiple of 16


@triton.jit
def _tile_coords(tile_id, num_pid_in_group, num_pid_m, GROUP_M: tl.constexpr):
    group_id = tile_id // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (tile_id % group_size_m)
    pid_n = (tile_id % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def persistent_mm_kernel(
    A, B, C, BIAS,
    M, N, K,
    stride_am, stride_b, stride_cm,
    NUM_PROGRAMS,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    B_NK: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr, FLATTEN: tl.constexpr, EPILOGUE_SUBTILE: tl.constexpr,
):
    dtype = C.dtype.element_ty
    start_pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_tiles = num_pid_m * num_pid_n
    num_pid_in_group = GROUP_M * num_pid_n

    a_desc = tl.make_tensor_descriptor(A, shape=[M, K], strides=[stride_am, 1], block_shape=[BLOCK_M, BLOCK_K])
    if B_NK:
        b_desc = tl.make_tensor_descriptor(B, shape=[N, K], strides=[stride_b, 1], block_shape=[BLOCK_N, BLOCK_K])
    else:
        b_desc = tl.make_tensor_descriptor(B, shape=[K, N], strides=[stride_b, 1], block_shape=[BLOCK_K, BLOCK_N])
    c_desc = tl.make_tensor_descriptor(C, shape=[M, N], strides=[stride_cm, 1],
                                       block_shape=[BLOCK_M, BLOCK_N // 2 if EPILOGUE_SUBTILE else BLOCK_N])

    # the epilogue's tile counter runs apart from the main loop's, as in Triton's tutorial 09:
    # with FLATTEN the compiler pipelines the next tile's loads under this tile's store
    tile_id_c = start_pid - NUM_PROGRAMS
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
            # two half-width stores: half the shared memory for the C tile, and the first half's
            # store overlaps the second half's conversion
            halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
            acc0, acc1 = tl.split(halves)
            c_desc.store([offs_cm, offs_cn], acc0.to(dtype))
            c_desc.store([offs_cm, offs_cn + BLOCK_N // 2], acc1.to(dtype))
        else:
            c_desc.store([offs_cm, offs_cn], acc.to(dtype))


KERNEL_FUNCTIONS = (persistent_mm_kernel, _tile_coords)  # what a tuned config's timings belong to (jit_source_hash)


def _scratch(size: int, alignment: int, stream):
    """Global scratch for device-side descriptors (128 B per program)."""
    return torch.empty(size, dtype=torch.int8, device="cuda" if torch.cuda.is_available() else "cpu")


def b_layout(b: torch.Tensor) -> tuple[bool, int] | None:
    """(B_NK, the descriptor's row stride) for B (K x N), or None when neither layout fits:
    B_NK when B is an N x K row-major weight seen through .t() (stride (1, K'))."""
    if b.stride(0) == 1 and b.stride(1) >= b.shape[0]:
        return True, b.stride(1)
    if b.stride(1) == 1 and b.stride(0) >= b.shape[1]:
        return False, b.stride(0)
    return None


def tma_reason(a: torch.Tensor, b: torch.Tensor, tensors: list[torch.Tensor], strides: list[int]) -> str | None:
    """Why TMA cannot read these operands: their dtypes, or a base address or stride (elements)
    off a 16-byte boundary; None when it can."""
    if a.dtype != b.dtype or a.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return "needs A and B of one dtype: fp16, bf16 or fp32"
    return tma_misaligned(tensors, [s * a.element_size() for s in strides])


def tma_misaligned(tensors: list[torch.Tensor], byte_strides: list[int]) -> str | None:
    """Why TMA cannot read these tensors: a base address or a row stride (bytes) off a 16-byte
    boundary; None when it can."""
    if any(t.data_ptr() % TMA_ALIGN for t in tensors) or any(s % TMA_ALIGN for s in byte_strides):
        return f"needs {TMA_ALIGN}-byte aligned base addresses and row strides (TMA)"
    return None


def unsupported(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> str | None:
    """Why this kernel cannot take these tensors as they are (TMA's layout rules), or None."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        return "needs 2-D A (M x K) and B (K x N) with matching K"
    layout = b_layout(b)
    if a.stride(1) != 1 or layout is None:
        return "needs A with contiguous rows and B as K x N rows or an N x K weight's .t()"
    if out is not None and (out.stride(1) != 1 or out.dtype != a.dtype):
        return "needs an output with contiguous rows in the inputs' dtype"
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != b.shape[1] or bias.stride(0) != 1):
        return "needs a contiguous 1-D bias of N"
    outs = [out] if out is not None else []
    return tma_reason(a, b, [a, b, *outs], [a.stride(0), layout[1], *(o.stride(0) for o in outs)])


def num_programs(M: int, N: int, config: dict, sm_count: int, batch: int = 1) -> int:
    """Resident programs: one per output tile up to OCCUPANCY per SM (over every batch)."""
    tiles = batch * cdiv(M, config["BLOCK_M"]) * cdiv(N, config["BLOCK_N"])
    return max(1, min(tiles, sm_count * config.get("OCCUPANCY", 1)))


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count_of(device: torch.device) -> int:
    # cached: get_device_properties is host time on every eager call (H200: 104 µs per call, cuBLAS
    # 22 µs, before the cache). The interpreter has no SMs: 3 programs still walk several tiles each
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 3


class Unsupported(ValueError):
    """Tensors TMA cannot read as they are: the caller serves them another way."""


def _launch_kwargs(config: dict, b_nk: bool, has_bias: bool, ieee: bool) -> dict:
    return dict(
        BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"], BLOCK_K=config["BLOCK_K"],
        GROUP_M=config.get("GROUP_M", 8), B_NK=b_nk, HAS_BIAS=has_bias, IEEE=ieee,
        WARP_SPECIALIZE=bool(config.get("WARP_SPECIALIZE", 0)), FLATTEN=bool(config.get("FLATTEN", 0)),
        EPILOGUE_SUBTILE=bool(config.get("EPILOGUE_SUBTILE", 0)),
        num_warps=config.get("num_warps", 4), num_stages=config.get("num_stages", 3),
    )


persistent_mm_direct = DirectLaunch(persistent_mm_kernel)  # later launches skip Triton's dispatch


def persistent_mm(a: torch.Tensor, b: torch.Tensor, config: dict, out: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """C = A @ B (+ bias) with `config` (BLOCK_M/N/K, GROUP_M, OCCUPANCY, WARP_SPECIALIZE,
    FLATTEN, EPILOGUE_SUBTILE, num_warps, num_stages; HOST_DESC=1 runs kernels/persistent_host_mm.py).
    Raises Unsupported for tensors TMA cannot take as they are (`unsupported` says why; the router
    serves those natively)."""
    if own_module(config | {"variant": "persistent"}) == PERSISTENT_HOST_MODULE:  # the records' hash's predicate
        from kernels.persistent_host_mm import persistent_host_mm

        return persistent_host_mm(a, b, config, out=out, bias=bias)
    M, K = a.shape
    N = b.shape[1]
    c = out if out is not None else torch.empty((M, N), dtype=a.dtype, device=a.device)
    reason = unsupported(a, b, c, bias)
    if reason:
        raise Unsupported(f"persistent_mm {tuple(a.shape)} @ {tuple(b.shape)}: {reason}")
    b_nk, stride_b = b_layout(b)
    programs = num_programs(M, N, config, sm_count_of(a.device))
    triton.set_allocator(_scratch)
    persistent_mm_direct[(programs,)](
        a, b, c, bias if bias is not None else c, M, N, K,
        a.stride(0), stride_b, c.stride(0), programs,
        **_launch_kwargs(config, b_nk, bias is not None, a.dtype == torch.float32),
    )
    return c


def persistent_warmup(key: tuple, dtype: str, config: dict, has_bias: bool = False):
    """Compile `config` for key (M, N, K, BT) without launching (BT=1: B is an N x K weight's
    .t()), as splitk_warmup does: Triton specialises on dtypes and on integers' divisibility.
    Returns Triton's compiled kernel (its `asm` holds the TTGIR and PTX)."""
    M, N, K, bt = key
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    programs = num_programs(M, N, config, sm_count_of(torch.device("cuda")))
    triton.set_allocator(_scratch)
    return persistent_mm_kernel.warmup(
        dt, dt, dt, dt, M, N, K, K, K if bt else N, N, programs,
        grid=(programs,), **_launch_kwargs(config, bool(bt), has_bias, dt == torch.float32),
    )
