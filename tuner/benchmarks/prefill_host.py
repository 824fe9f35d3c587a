"""Where an eager LLM prefill's time goes under FlagGems with tuned configs (issue 4 b: prefill
was 6-9x native on the H100 while decode in a CUDA graph was 1.07x, i.e. host-bound).

usage: python -m tuner.benchmarks.prefill_host --db TUNED.db [--exclude ops] [--tokens 512] > out.txt
One process: native prefill wall time; then the tuner runtime (apply_state: FlagGems minus the
exclude list, seeded cache, in-memory config cache) and, after warm-up, the prefill's wall time,
its GPU kernel time (torch.profiler), the aten ops with the most host (self CPU) time, and the
Python functions with the most own time (cProfile).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time


def _wall_ms(torch, fn, n: int = 3) -> float:
    best = float("inf")
    for _ in range(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) * 1e3)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--exclude", default="arange_start,layer_norm,mul,weight_norm_interface")
    ap.add_argument("--tokens", type=int, default=512)
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from tuner.inject.plugin import apply_state, write_runtime_dir
    from tuner.serving.flow import select_records
    from tuner.profiling.workload import RequestOptions, build_model, build_requests

    model = build_model(1.0, torch.bfloat16, "cuda", components=["llm"])
    steps = build_requests(model, "text", RequestOptions(prompt_tokens=args.tokens, decode_batches=(1,), decode_steps=1))
    prefill = next(s for s in steps if s.name.startswith("text.prefill"))
    for _ in range(2):
        prefill.run()
    print(f"native prefill S={args.tokens}: {_wall_ms(torch, prefill.run):.2f} ms wall")

    records = select_records(args.db, False)
    folder = write_runtime_dir(tempfile.mkdtemp(prefix="prefill_host_"), records,
                               [x for x in args.exclude.split(",") if x], max_tokens=2048)
    print("tuner runtime:", apply_state(folder))
    for _ in range(3):  # FlagGems compiles / autotunes the keys tuner did not tune (addmm) here
        prefill.run()
    print(f"tuned FlagGems prefill S={args.tokens}: {_wall_ms(torch, prefill.run):.2f} ms wall")

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        prefill.run()
        torch.cuda.synchronize()
    ka = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in ka)
    print(f"GPU kernel time in the profiled prefill: {gpu_us / 1e3:.2f} ms")
    print("top aten ops by host (self CPU) time: name | calls | self CPU ms | self GPU ms")
    for e in sorted(ka, key=lambda e: -e.self_cpu_time_total)[:20]:
        print(f"  {e.key[:60]:60s} | {e.count:5d} | {e.self_cpu_time_total / 1e3:8.2f} | "
              f"{e.self_device_time_total / 1e3:8.2f}")

    pr = cProfile.Profile()
    pr.enable()
    prefill.run()
    torch.cuda.synchronize()
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(30)
    print("cProfile of one prefill, by own time:")
    print(buf.getvalue()[-9000:])


if __name__ == "__main__":
    main()
