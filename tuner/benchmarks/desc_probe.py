"""Do device-side TMA descriptors cost tuner's persistent GEMM its small keys? An experiment for
issue 12's addmm misses (H200, session 7: the persistent kernel won Whisper's addmm keys at
M=1500 and qkv at M=512 among tuner's and FlagGems' kernels, yet took 1.19-1.48x and 1.62x
cuBLAS's time there).

kernels/persistent_mm.py builds its three descriptors in every program (tl.make_tensor_descriptor:
a 128-byte tensor map written to global scratch, then a proxy fence, before the first load), a
fixed cost per launch that a 8-25 us GEMM may feel. The kernel below is the same tile loop, tile
order and bias epilogue with descriptors built on the host (triton.tools.tensor_descriptor, as
FlagGems' Hopper mm and Triton's tutorial 09 do) and passed as arguments. Both, and cuBLAS, are
timed as the search times them (tuner.tuning.measure.time_runner: CUDA-graph replays over input
sets rotated through 3x the L2), with one config per key (the key's persistent winner of
session 7), so the ratios compare with session 7's. An experiment, not a
variant: the host kernel is not in the search; if it wins by microseconds, the persistent kernel
gets host descriptors (a new kernel source: its stored timings would be re-tuned).

usage: python -m tuner.benchmarks.desc_probe   (on the GPU host; one JSON line per key)
"""

from __future__ import annotations

import json

import torch
import triton
import triton.language as tl

from kernels.persistent_mm import _tile_coords

# (M, N, K), bias or not, and session 7's persistent winner there (results/gemm_h200/session7/
# REPORT.md; o M=512's is its best persistent config, fg_tma won that key)
CASES = [
    ((1500, 1024, 1024), True, dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=4, num_warps=4, num_stages=5,
                                    FLATTEN=1)),
    ((1500, 1024, 4096), True, dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4,
                                    FLATTEN=1)),
    ((1500, 3584, 1024), True, dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4,
                                    FLATTEN=1)),
    ((512, 4608, 3584), True, dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3,
                                   EPILOGUE_SUBTILE=1)),
    ((512, 3584, 3584), False, dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4)),
    ((4096, 3584, 3584), False, dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=4, num_warps=4, num_stages=5,
                                     FLATTEN=1)),
]


@triton.jit
def persistent_host_desc_kernel(
    a_desc, b_desc, c_desc, BIAS, M, N, K, NUM_PROGRAMS,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    HAS_BIAS: tl.constexpr, FLATTEN: tl.constexpr, EPILOGUE_SUBTILE: tl.constexpr,
):
    """persistent_mm_kernel's loop (B an N x K weight, warp specialisation off) on descriptors the
    host built."""
    start_pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_tiles = num_pid_m * num_pid_n
    num_pid_in_group = GROUP_M * num_pid_n
    tile_id_c = start_pid - NUM_PROGRAMS  # the epilogue's own counter, as in persistent_mm_kernel
    for tile_id in tl.range(start_pid, num_tiles, NUM_PROGRAMS, flatten=FLATTEN):
        pid_m, pid_n = _tile_coords(tile_id, num_pid_in_group, num_pid_m, GROUP_M)
        offs_m = pid_m * BLOCK_M
        offs_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in range(k_tiles):
            offs_k = ki * BLOCK_K
            acc = tl.dot(a_desc.load([offs_m, offs_k]), b_desc.load([offs_n, offs_k]).T, acc)
        tile_id_c += NUM_PROGRAMS
        pid_m, pid_n = _tile_coords(tile_id_c, num_pid_in_group, num_pid_m, GROUP_M)
        offs_m = pid_m * BLOCK_M
        offs_n = pid_n * BLOCK_N
        if HAS_BIAS:
            rn = offs_n + tl.arange(0, BLOCK_N)
            acc += tl.load(BIAS + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        if EPILOGUE_SUBTILE:
            halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
            acc0, acc1 = tl.split(halves)
            c_desc.store([offs_m, offs_n], acc0.to(c_desc.dtype))
            c_desc.store([offs_m, offs_n + BLOCK_N // 2], acc1.to(c_desc.dtype))
        else:
            c_desc.store([offs_m, offs_n], acc.to(c_desc.dtype))


def host_desc_mm(a: torch.Tensor, w: torch.Tensor, config: dict, out: torch.Tensor,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """out = a @ w.T (+ bias) through persistent_host_desc_kernel (w: the N x K weight)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    from kernels.persistent_mm import num_programs, sm_count_of

    M, K = a.shape
    N = w.shape[0]
    bm, bn, bk = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
    sub = bool(config.get("EPILOGUE_SUBTILE", 0))
    programs = num_programs(M, N, config, sm_count_of(a.device))
    persistent_host_desc_kernel[(programs,)](
        TensorDescriptor.from_tensor(a, [bm, bk]), TensorDescriptor.from_tensor(w, [bn, bk]),
        TensorDescriptor.from_tensor(out, [bm, bn // 2 if sub else bn]),
        bias if bias is not None else out, M, N, K, programs,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=config.get("GROUP_M", 8), HAS_BIAS=bias is not None,
        FLATTEN=bool(config.get("FLATTEN", 0)), EPILOGUE_SUBTILE=sub, num_warps=config.get("num_warps", 4), num_stages=config.get("num_stages", 3),
    )
    return out


def probe(shape: tuple[int, int, int], has_bias: bool, config: dict) -> dict:
    from kernels.persistent_mm import persistent_mm
    from tuner.benchmarks.side_by_side import cublas, rel_error, rotated_sets, time_side_by_side

    M, N, K = shape
    runs = {
        "device": lambda args, out: persistent_mm(args[0], args[1].t(), config, out=out, bias=args[2]),
        "host": lambda args, out: host_desc_mm(args[0], args[1], config, out, args[2]),
        "cublas": cublas(has_bias),
    }
    timed, outs = time_side_by_side(runs, rotated_sets(M, N, K, has_bias), M, N)
    row: dict = {"key": list(shape), "bias": has_bias, "config": config, **timed}
    # the two Triton kernels run one tile loop in one order: the same bits
    row["host_equals_device"] = bool(torch.equal(outs["host"], outs["device"]))
    row["rel_error_vs_cublas"] = rel_error(outs["device"], outs["cublas"])
    row["host_over_device"] = round(row["host_us"] / row["device_us"], 3)
    row["device_over_cublas"] = round(row["device_us"] / row["cublas_us"], 3)
    return row


def main() -> None:
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}))
    for shape, has_bias, config in CASES:
        try:
            row = probe(shape, has_bias, config)
        except Exception as e:  # noqa: BLE001 — a key that fails is reported, the others still run
            row = {"key": list(shape), "error": f"{type(e).__name__}: {e}"[:400]}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
