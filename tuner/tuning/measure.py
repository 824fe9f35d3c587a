"""Timing and checking one runner on one key. Runs inside the worker process, which owns the
CUDA context; nothing here talks to the database or to Optuna."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

from kernels.base import Inputs, Kernel, Key, Runner

L2_ROTATE_FACTOR = 3  # rotate input sets until they span 3x the L2 cache
# a cap only for toy keys: the smallest MiniCPM-o GEMM set (k/v addmm at M=1, 3.7 MB) needs 49 sets
# for 3x the H200's 60 MB L2 (the old cap of 8 rotated 28 MB: those keys were timed from L2)
MAX_SETS = 256
SAMPLE_MS = 2.0  # each timing sample covers about this much GPU time
SAMPLES = 7


@dataclass
class Check:
    rel_error: float
    max_abs_error: float
    max_abs_ref: float = 0.0  # the reference's largest |element|: the elementwise bound's scale


def wrong_result(kernel: Kernel, chk: Check, dtype: str) -> str | None:
    """Why a checked output is wrong (NaN, relative error, or one element too far off), else None."""
    tol, etol = kernel.tolerance(dtype), kernel.elementwise_tolerance(dtype)
    if not chk.rel_error <= tol:  # NaN fails too
        return f"wrong result: rel error {chk.rel_error:.3g} > {tol:g}"
    if not chk.max_abs_error <= etol * chk.max_abs_ref:
        return (f"wrong result: an element is off by {chk.max_abs_error:.3g}, over {etol:g} of the largest "
                f"reference element ({chk.max_abs_ref:.3g})")
    return None


def n_sets_for(kernel: Kernel, key: Key, dtype: str, device: str, l2_bytes: int) -> int:
    """How many input sets to rotate between timed calls so none is read from L2."""
    if device != "cuda":
        return 1
    per_set = max(1, kernel.bytes_per_set(key, dtype))
    return max(1, min(MAX_SETS, math.ceil(L2_ROTATE_FACTOR * l2_bytes / per_set)))


def check(kernel: Kernel, run: Runner, inputs: Inputs) -> Check:
    """Poison the output, run once on set 0, compare with the reference."""
    import torch

    args, out = inputs.sets[0], inputs.outs[0]
    if out.dtype.is_floating_point:
        out.fill_(float("nan"))  # an element the kernel never writes stays NaN
    run(args, out)
    if out.is_cuda:
        torch.cuda.synchronize()
    ref = inputs.ref if inputs.ref is not None else kernel.reference(args)
    diff = out.to(ref.dtype) - ref
    ref_norm = ref.norm().item()
    rel = diff.norm().item() / ref_norm if ref_norm > 0 else diff.norm().item()
    max_abs = diff.abs().max().item() if diff.numel() else 0.0
    ref_max = ref.abs().max().item() if ref.numel() else 0.0
    if math.isnan(rel) or math.isnan(max_abs):
        rel = max_abs = float("nan")
    return Check(rel_error=rel, max_abs_error=max_abs, max_abs_ref=ref_max)


def _run_all(run: Runner, inputs: Inputs) -> Callable[[], None]:
    pairs = list(zip(inputs.sets, inputs.outs))

    def run_all() -> None:
        for args, out in pairs:
            run(args, out)

    return run_all


def rotation(names: list[str], r: int) -> list[str]:
    """Round r's order of a side-by-side pass: who goes first rotates, so no runner always times
    right after the same neighbour (its power or L2 state)."""
    return names[r % len(names):] + names[: r % len(names)]


def time_runner(run: Runner, inputs: Inputs, device: str, warm_ms: float = 0.0) -> tuple[float, str]:
    """Median time of one call in µs, and the method used. warm_ms: GPU time the runner runs for
    untimed just before the samples (clock_probe's warmed regimes). The search does not warm up:
    on the H200, 250 and 1000 ms warm-ups timed 0.91-1.22x the back-to-back pass, the power
    controller still settling (results/gemm_h200/session17), no closer than no warm-up."""
    run_all = _run_all(run, inputs)
    n = len(inputs.sets)
    if device != "cuda":
        run_all()  # first call outside the timing
        deadline = time.perf_counter() + warm_ms / 1000.0  # (wall time here: the interpreter has no clock)
        while time.perf_counter() < deadline:
            run_all()
        samples = []
        for _ in range(3):
            t0 = time.perf_counter()
            run_all()
            samples.append((time.perf_counter() - t0) / n)
        return statistics.median(samples) * 1e6, "interpreter-wall"
    try:
        return _time_cuda_graph(run_all, n, warm_ms), "cuda-graph"
    except RuntimeError as e:
        if "capture" not in str(e).lower() and "graph" not in str(e).lower():
            raise
        return _time_cuda_events(run_all, n, warm_ms), "cuda-events"


def _time_cuda_graph(run_all: Callable[[], None], n: int, warm_ms: float = 0.0) -> float:
    """Replays of a CUDA graph holding one call per input set: no launch gaps, as vLLM's
    decode runs, and each call reads a different set (weights not in L2)."""
    import torch

    run_all()  # compiles / autotunes outside the graph
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run_all()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run_all()
    try:
        return _sample(graph.replay, n, warm_ms)
    finally:
        del graph


def _time_cuda_events(run_all: Callable[[], None], n: int, warm_ms: float = 0.0) -> float:
    import torch

    run_all()
    torch.cuda.synchronize()
    return _sample(run_all, n, warm_ms)


def _sample(fn: Callable[[], None], n: int, warm_ms: float = 0.0) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    first_ms = max(start.elapsed_time(end), 1e-3)
    if warm_ms > 0:  # untimed, one synchronisation at its end
        for _ in range(min(100_000, math.ceil(warm_ms / first_ms))):
            fn()
        end.record()
        end.synchronize()
    inner = max(1, min(1000, int(SAMPLE_MS / first_ms)))
    samples = []
    for _ in range(SAMPLES):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / inner)
    return statistics.median(samples) * 1000.0 / n
