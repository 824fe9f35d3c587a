"""Several GEMM implementations timed on one key as the search times them: the same input sets
rotated through 3x the L2 (tuner.tuning.measure), CUDA-graph replays, one output set each. What the
GPU probes (desc_probe, fused_probe) share, so their ratios compare with the search's."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

# run(args, out) with args = (a M x K, w N x K, bias N or None)
Run = Callable[[tuple, torch.Tensor], object]


def rotated_sets(M: int, N: int, K: int, has_bias: bool, seed: int = 0) -> list[tuple]:
    """(a, w, bias) bf16 input sets, as many as the search rotates for this key's bytes."""
    from tuner.tuning.measure import L2_ROTATE_FACTOR, MAX_SETS

    g = torch.Generator(device="cuda").manual_seed(seed)
    per_set = 2 * (M * K + N * K + M * N + N)  # bf16 bytes of a, w, out, bias
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    n = max(1, min(MAX_SETS, math.ceil(L2_ROTATE_FACTOR * l2 / per_set)))

    def new(*size):
        return torch.randn(*size, device="cuda", dtype=torch.bfloat16, generator=g)

    return [(new(M, K), new(N, K), new(N) if has_bias else None) for _ in range(n)]


def cublas(has_bias: bool) -> Run:
    """torch's GEMM (cuBLAS) on the same arguments, into the same output."""
    if has_bias:
        return lambda args, out: torch.addmm(args[2], args[0], args[1].t(), out=out)
    return lambda args, out: torch.mm(args[0], args[1].t(), out=out)


def time_side_by_side(runs: Mapping[str, Run], sets: list[tuple], M: int, N: int) -> tuple[dict, dict]:
    """({name}_us per run and the timing method, each run's output on the first set)."""
    from kernels.base import Inputs
    from tuner.tuning.measure import time_runner

    row: dict = {"input_sets": len(sets)}
    outs = {}
    for name, run in runs.items():
        inputs = Inputs(sets=sets, outs=[torch.empty(M, N, device="cuda", dtype=torch.bfloat16) for _ in sets])
        us, method = time_runner(run, inputs, "cuda")
        row[f"{name}_us"], row["timing"] = round(us, 2), method
        outs[name] = inputs.outs[0]
    return row, outs


def rel_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.float() - ref.float()).norm() / ref.float().norm())
