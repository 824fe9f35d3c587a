"""Split-K with its reduction in the same launch (FUSED_REDUCE=1, kernels/splitk_fused.py) against
the two-kernel split-K and cuBLAS, on the decode keys split-K won on the H200 (session 7: o and down
at M = 1..32, qkv at M = 8..32), each with its session-7 winner config, so the only difference
between the two Triton runs is the second launch. Timed as the search times them (side_by_side:
graph replays over input sets rotated through 3x the L2) with the copy bandwidth of the same run:
issue 12's decode target is weights read at >= 90% of it (session 7: o 54-56%, qkv 60-62%, down
84-85%). An experiment: the search tries FUSED_REDUCE itself once the GEMM set is re-tuned.
usage: python -m tuner.benchmarks.fused_probe   (on the GPU host; one JSON line per key)
"""

from __future__ import annotations

import json

import torch
import triton


def _cfg(bm: int, bn: int, bk: int, sk: int, warps: int, stages: int) -> dict:
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=1, SPLIT_K=sk, num_warps=warps, num_stages=stages)


# (layer, (M, N, K), bias, session 7's split-K winner: results/gemm_h200/session7/REPORT.md; qkv M=1's
# key went to FlagGems' addmm, its M=8 split-K config stands in)
CASES = [
    ("o", (1, 3584, 3584), False, _cfg(16, 64, 64, 8, 8, 3)),
    ("o", (8, 3584, 3584), False, _cfg(16, 32, 128, 4, 2, 3)),
    ("o", (32, 3584, 3584), False, _cfg(32, 32, 128, 4, 2, 3)),
    ("qkv", (1, 4608, 3584), True, _cfg(16, 32, 128, 4, 2, 3)),
    ("qkv", (8, 4608, 3584), True, _cfg(16, 32, 128, 4, 2, 3)),
    ("qkv", (32, 4608, 3584), True, _cfg(32, 32, 128, 4, 2, 3)),
    ("down", (1, 3584, 18944), False, _cfg(16, 128, 128, 4, 4, 4)),
    ("down", (8, 3584, 18944), False, _cfg(16, 64, 128, 8, 4, 3)),
    ("down", (32, 3584, 18944), False, _cfg(32, 64, 128, 4, 2, 4)),
]


def probe(shape: tuple[int, int, int], has_bias: bool, config: dict, copy_Bps: float) -> dict:
    from kernels.triton_mm import splitk_mm
    from tuner.benchmarks.side_by_side import cublas, rel_error, rotated_sets, time_side_by_side

    M, N, K = shape
    fused = config | {"FUSED_REDUCE": 1}
    runs = {
        "two": lambda args, out: splitk_mm(args[0], args[1].t(), config, out=out, bias=args[2]),
        "fused": lambda args, out: splitk_mm(args[0], args[1].t(), fused, out=out, bias=args[2]),
        "cublas": cublas(has_bias),
    }
    timed, outs = time_side_by_side(runs, rotated_sets(M, N, K, has_bias), M, N)
    row: dict = {"key": list(shape), "bias": has_bias, "config": config, **timed}
    row["fused_equals_two"] = bool(torch.equal(outs["fused"], outs["two"]))  # the same sums in the same order
    row["rel_error_vs_cublas"] = rel_error(outs["fused"], outs["cublas"])
    row["fused_over_two"] = round(row["fused_us"] / row["two_us"], 3)
    row["fused_over_cublas"] = round(row["fused_us"] / row["cublas_us"], 3)
    row["two_over_cublas"] = round(row["two_us"] / row["cublas_us"], 3)
    weight = 2 * N * K  # bf16 bytes of the weight: what a decode GEMM reads
    for name in ("two", "fused", "cublas"):
        row[f"{name}_weight_bw"] = round(weight / (row[f"{name}_us"] * 1e-6) / copy_Bps, 3)
    return row


def main() -> None:
    from tuner.benchmarks.copy_bw import copy_bandwidth

    copy = copy_bandwidth()
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                      "copy_bandwidth_Bps": copy["bandwidth_Bps"]}), flush=True)
    for layer, shape, has_bias, config in CASES:
        try:
            row = {"layer": layer, **probe(shape, has_bias, config, copy["bandwidth_Bps"])}
        except Exception as e:  # noqa: BLE001 — a key that fails is reported, the others still run
            row = {"layer": layer, "key": list(shape), "error": f"{type(e).__name__}: {e}"[:400]}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
