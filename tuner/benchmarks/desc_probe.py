"""Do device-side TMA descriptors cost tuner's persistent GEMM its small keys? An experiment for
issue 12's addmm misses (H200, session 7: the persistent kernel won Whisper's addmm keys at
M=1500 and qkv at M=512 among tuner's and FlagGems' kernels, yet took 1.19-1.48x and 1.62x
cuBLAS's time there).

kernels/persistent_mm.py builds its three descriptors in every program (tl.make_tensor_descriptor:
a 128-byte tensor map written to global scratch, then a proxy fence, before the first load), a
fixed cost per launch that a 8-25 us GEMM may feel. The host form is the same tile loop, tile
order and bias epilogue with descriptors built on the host (triton.tools.tensor_descriptor, as
FlagGems' Hopper mm and Triton's tutorial 09 do) and passed as arguments. Both, and cuBLAS, are
timed as the search times them (tuner.tuning.measure.time_runner: CUDA-graph replays over input
sets rotated through 3x the L2), with one config per key (the key's persistent winner of
session 7), so the ratios compare with session 7's. It won (H200, session 9: 0.82-0.99x the
time, results/gemm_h200/session9/desc_probe.jsonl, made with this probe's own copy of the kernel)
and became the persistent variant's knob HOST_DESC (kernels/persistent_host_mm.py), which this
probe now times.

usage: python -m tuner.benchmarks.desc_probe   (on the GPU host; one JSON line per key)
"""

from __future__ import annotations

import json

import torch
import triton

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


def probe(shape: tuple[int, int, int], has_bias: bool, config: dict) -> dict:
    from kernels.persistent_mm import persistent_mm
    from tuner.benchmarks.side_by_side import cublas, rel_error, rotated_sets, time_side_by_side

    M, N, K = shape
    runs = {
        "device": lambda args, out: persistent_mm(args[0], args[1].t(), config, out=out, bias=args[2]),
        "host": lambda args, out: persistent_mm(args[0], args[1].t(), config | {"HOST_DESC": 1}, out=out,
                                                bias=args[2]),
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
