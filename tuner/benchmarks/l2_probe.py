"""Do the engine's prefill GEMMs read their activation from L2, and does that move tuned / cuBLAS?
An experiment for issue 12 (H200).

In vLLM's engine the M = 4096 keys do not keep the ratios tuner's side-by-side pass records: run 11
timed gate_up 1584 us a call on cuBLAS and 1634 on tuner's persistent kernel (1.031x; the pass:
1580 / 1546, 0.979x), run 10b 1575 / 1602. The pass rotates every input over 3x the L2 (weights
must not come from L2, and in the engine each layer's weights are cold too), but in the engine the
activation A (4096 x 3584 bf16, 29 MB: half the H200's 60 MB L2) was written by the RMSNorm just
before the GEMM. Here each key's cuBLAS and tuned kernels are timed in the pass's regime (rounds
back to back, who goes first rotating) two ways: "rotated", as tuner times them
(measure.time_runner), and "a_in_l2": each call preceded by a copy that writes its A as the norm
does, the copy's own time (timed alone the same way, in the same round) subtracted.

usage: python -m tuner.benchmarks.l2_probe --db URL [--rounds 5]
  (on the GPU host; --db: a tuner database whose best configs are the tuned kernels)
One JSON line per key and runner (medians over rounds), then a line per key: tuned / cuBLAS both ways.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable

# (op, M, N, K): the prefill chunk's GEMMs of runs 10b and 11 (gate_up, down, q/k/v, o)
KEYS = [("mm", 4096, 37888, 3584), ("mm", 4096, 3584, 18944), ("addmm", 4096, 4608, 3584),
        ("mm", 4096, 3584, 3584)]


def a_index(op: str) -> int:
    """Where the activation sits in an op's input set: mm (a, b), addmm (bias, a, b)."""
    return 1 if op == "addmm" else 0


def writes_a_first(run: Callable, index: int, src) -> Callable:
    """`run` with its activation written just before it (copied from `src`), as a norm writes it."""
    def run_after_write(args, out):
        args[index].copy_(src)
        run(args, out)

    return run_after_write


def write_only(index: int, src) -> Callable:
    """The write alone: its time is subtracted from the written-then-run timing."""
    def write(args, out):
        args[index].copy_(src)

    return write


def ratio_line(key: tuple, medians: dict[str, dict[str, float]]) -> dict:
    """tuned / cuBLAS per way of timing, and each runner's a_in_l2 / rotated."""
    out: dict = {"key": list(key)}
    cub, tuned = medians.get("cublas"), medians.get("tuned")
    for way in ("rotated", "a_in_l2"):
        if cub and tuned and cub.get(way) and tuned.get(way):
            out[f"tuned_vs_cublas_{way}"] = round(tuned[way] / cub[way], 4)
    for name, m in medians.items():
        if m.get("rotated") and m.get("a_in_l2"):
            out[f"{name}_a_in_l2_vs_rotated"] = round(m["a_in_l2"] / m["rotated"], 4)
    return out


def probe_key(key: tuple, config: dict | None, rounds: int) -> tuple[dict, dict]:
    """(medians per runner and way, in us; the key's ratio line)."""
    import torch

    from kernels import get_kernel
    from tuner.tuning import measure

    op, M, N, K = key
    kernel = get_kernel(op)
    kkey = (M, N, K, 1)
    l2 = torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size
    inputs = kernel.make_inputs(kkey, "bf16", "cuda", measure.n_sets_for(kernel, kkey, "bf16", "cuda", l2), 0)
    i = a_index(op)
    src = torch.randn_like(inputs.sets[0][i])
    runners = {"cublas": kernel.baselines(kkey, "bf16", "cuda")["native"]}
    if config:
        runners["tuned"] = kernel.runner(kkey, config, "bf16", "cuda")
    write = write_only(i, src)
    timed = {n: {"rotated": [], "written": []} for n in runners}
    writes: list[float] = []
    names = list(runners)
    for run in runners.values():  # compiled and warm outside every timing
        measure.time_runner(run, inputs, "cuda")
    for r in range(rounds):  # back to back, as the finalists' pass (the engine's clock regime)
        for name in names[r % len(names):] + names[: r % len(names)]:
            timed[name]["rotated"].append(measure.time_runner(runners[name], inputs, "cuda")[0])
            timed[name]["written"].append(measure.time_runner(writes_a_first(runners[name], i, src), inputs,
                                                              "cuda")[0])
        writes.append(measure.time_runner(write, inputs, "cuda")[0])
    write_us = statistics.median(writes)
    medians = {n: {"rotated": statistics.median(t["rotated"]),
                   "a_in_l2": statistics.median(t["written"]) - write_us,
                   "write_us": write_us, "rounds": rounds} for n, t in timed.items()}
    return medians, ratio_line(key, medians)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tuner.benchmarks.l2_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--db", help="tuner database (path or URL) whose best configs are timed beside cuBLAS")
    p.add_argument("--rounds", type=int, default=5, help="rounds back to back (the finalists' 5)")
    a = p.parse_args(argv)
    if a.rounds < 1:
        p.error("--rounds must be 1 or more")
    import torch

    if not torch.cuda.is_available():
        p.error("needs an NVIDIA GPU (torch sees no CUDA device)")
    from db import DatabaseUnusable
    from tuner.benchmarks.clock_probe import tuned_configs

    try:
        configs = tuned_configs(a.db, KEYS)
    except DatabaseUnusable as e:
        p.error(str(e))
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rounds": a.rounds,
                      "l2_mb": torch.cuda.get_device_properties(0).L2_cache_size / 2**20}), flush=True)
    for key in KEYS:
        medians, line = probe_key(key, configs.get(key), a.rounds)
        for name, m in medians.items():
            print(json.dumps({"key": list(key), "runner": name, "config": configs.get(key) if name == "tuned" else None,
                              **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in m.items()}}), flush=True)
        print(json.dumps({"summary": line}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
