"""The resampler's forward for one 1344 x 1344 image, natively and with the GEMM router serving the
stored bmm records (issue 12, H200): does the batched kernel's win on the k/v projections reach the
module that makes them?

The module is the workload's own MiniCPM-o resampler (tuner/profiling/workload/resampler.py, real
dimensions, random weights, bf16): 10 slices of 32 x 32 patches, nn.MultiheadAttention on a
sequence-first input, so its k and v projections reach aten::bmm (kernels/bmm.py, layout linear).
The router is the one `tuner serve` installs (tuner/inject/gemm_router.py: plan_routes over the
records, install_router with FlagGems' and tuner's kernels as targets). Eager forwards, CUDA
events, median of REPEATS after WARMUP. Which aten op the projections reach depends on whether the
weights require grad (torch's matmul folds them into mm when they do): `resampler_and_input` sets
them as the workload's model does (no grad), and `gemm_calls` lists what one forward reached.

usage: python -m tuner.benchmarks.resampler_routes DB_URL   (on the GPU host; one JSON line)
"""

from __future__ import annotations

import json
import statistics
import sys

import torch

SLICES, GRID = 10, 32  # one 1344 x 1344 image (shared/facts/minicpmo-2.6.md)
WARMUP, REPEATS = 3, 20


def resampler_and_input(seed: int = 0):
    from tuner.profiling.workload.dims import model_dims
    from tuner.profiling.workload.resampler import Resampler

    torch.manual_seed(seed)
    r = model_dims().resampler
    module = Resampler(r.queries, r.embed, r.heads, r.kv_dim, r.pos_grid, device="cuda", dtype=torch.bfloat16)
    # as the workload's model (model.py): with weights that require grad, torch's matmul folds the
    # sequence-first k/v projections into one mm after copying the input (H200, torch 2.11: two
    # aten::mm 10240 x 3584 x 3584 a forward); without, they reach aten::bmm on the expanded weight
    module.requires_grad_(False)
    x = torch.randn(SLICES, GRID * GRID, r.kv_dim, device="cuda", dtype=torch.bfloat16)
    return module, x, [(GRID, GRID)] * SLICES


def forward_ms(module, x, sizes) -> tuple[float, torch.Tensor]:
    with torch.inference_mode():
        for _ in range(WARMUP):
            out = module(x, sizes)
        times = []
        for _ in range(REPEATS):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = module(x, sizes)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    return statistics.median(times), out


def gemm_calls(module, x, sizes) -> list[list]:
    """[aten op, input shapes] of one forward's GEMM-like ops as the dispatcher saw them (which
    aten op the k/v projections reach on this torch and device)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
        module(x, sizes)
    names = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::linear", "aten::matmul")
    return [[e.name, e.input_shapes] for e in p.events() if e.name in names]


def main() -> None:
    from tuner.inject.gemm_router import flaggems_targets, install_router, plan_routes
    from tuner.report import best_records

    if len(sys.argv) != 2:
        sys.exit("usage: python -m tuner.benchmarks.resampler_routes DB_URL")
    records = best_records(sys.argv[1], "bmm", None)
    module, x, sizes = resampler_and_input()
    native_ms, native = forward_ms(module, x, sizes)
    calls = gemm_calls(module, x, sizes)
    router = install_router(plan_routes(records, max_tokens=64), flaggems_targets())
    try:
        routed_ms, routed = forward_ms(module, x, sizes)
    finally:
        router.uninstall()
    rel = float((routed.float() - native.float()).norm() / native.float().norm())
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "slices": SLICES,
                      "records": len(records), "native_ms": round(native_ms, 3), "routed_ms": round(routed_ms, 3),
                      "speedup": round(native_ms / routed_ms, 3), "router_hits": dict(router.hits),
                      "rel_error_vs_native": rel, "gemm_calls": calls}))


if __name__ == "__main__":
    main()
