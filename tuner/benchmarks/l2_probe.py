"""Do the engine's prefill GEMMs read their activation from L2, and does that move tuned / cuBLAS?
An experiment for issue 12 (H200).

In vLLM's engine the M = 4096 keys do not keep the ratios tuner's side-by-side pass recorded: run
11's tuned engine ran gate_up (persistent 128x256x64, GROUP_M 16) at 1633.6 us a call against
native's cuBLAS 1584.4 (1.031x) where its database says 1617.5 / 1631.0 (0.992x); run 10b 1602.3 /
1575.3 (1.017x). The pass rotates every input over 3x the L2 (weights must not come from L2, and in
the engine each layer's weights are cold too), but in the engine the activation A (4096 x 3584 bf16,
29 MB: half the H200's 60 MB L2) was written by the RMSNorm just before the GEMM. Here each key's
cuBLAS and tuned kernels are timed back to back (the pass's regime, who goes first rotating) three
ways: "rotated", as tuner times them (measure.time_runner); "a_in_l2", each call preceded by a copy
that writes its A, as the norm does; "a_cold", the same copy into a scratch buffer of A's shape
instead (the same copy, the same traffic, only A's residency differs): a_in_l2 / a_cold is what a
resident A is worth to each kernel. Both include the copy; "a_in_l2_net" = a_in_l2 - (a_cold -
rotated) takes it out again (its cost measured where it runs, before a GEMM), for tuned / cuBLAS.

usage: python -m tuner.benchmarks.l2_probe [--db URL] [--rounds 5]
  (on the GPU host; --db: a tuner database whose best configs are the tuned kernels, cuBLAS alone
  without it. The configs run 11's engine served: results/vllm/h200_run11/bench_gemm.db.xz)
One JSON line per key and runner (medians over rounds), then a line per key: tuned / cuBLAS each way.
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


def writes_first(run: Callable, index: int | None, src, scratch=None) -> Callable:
    """`run` with a copy of `src` just before it: into its activation (args[index], as a norm
    writes it) or, with `scratch`, into that buffer instead (the same copy, A left cold)."""
    def run_after_write(args, out):
        (scratch if scratch is not None else args[index]).copy_(src)
        run(args, out)

    return run_after_write


WAYS = ("rotated", "a_cold", "a_in_l2")  # timed; a_in_l2_net is derived (net_of_copy)


def net_of_copy(m: dict[str, float]) -> float:
    """The GEMM's time with A resident, without the copy: a_in_l2 less the copy's cost before a
    GEMM (a_cold - rotated)."""
    return m["a_in_l2"] - (m["a_cold"] - m["rotated"])


def ratio_line(key: tuple, medians: dict[str, dict[str, float]]) -> dict:
    """tuned / cuBLAS each way, and each runner's a_in_l2 / a_cold (what a resident A is worth)."""
    out: dict = {"key": list(key)}
    cub, tuned = medians.get("cublas"), medians.get("tuned")
    for way in (*WAYS, "a_in_l2_net"):
        if cub and tuned and cub.get(way) and tuned.get(way):
            out[f"tuned_vs_cublas_{way}"] = round(tuned[way] / cub[way], 4)
    for name, m in medians.items():
        if m.get("a_cold") and m.get("a_in_l2"):
            out[f"{name}_a_in_l2_vs_a_cold"] = round(m["a_in_l2"] / m["a_cold"], 4)
    return out


def probe_key(key: tuple, config: dict | None, rounds: int) -> tuple[dict, dict]:
    """(medians per runner and way, in us; the key's ratio line)."""
    import torch

    from tuner.benchmarks.clock_probe import key_runners
    from tuner.tuning import measure

    op, M, N, K = key
    inputs, runners = key_runners(key, config, untuned=False)
    i = a_index(op)
    if tuple(inputs.sets[0][i].shape) != (M, K):  # never write over a bias or a weight
        raise ValueError(f"{op}'s input {i} is {tuple(inputs.sets[0][i].shape)}, not the activation ({M}, {K})")
    src, scratch = torch.randn_like(inputs.sets[0][i]), torch.empty_like(inputs.sets[0][i])
    ways = {n: {"rotated": r, "a_cold": writes_first(r, None, src, scratch), "a_in_l2": writes_first(r, i, src)}
            for n, r in runners.items()}
    timed = {n: {w: [] for w in WAYS} for n in runners}
    names = list(runners)
    for r in range(rounds):  # back to back, as the finalists' pass (the engine's clock regime)
        for name in measure.rotation(names, r):
            for way in WAYS:
                timed[name][way].append(measure.time_runner(ways[name][way], inputs, "cuda")[0])
    medians = {n: {w: statistics.median(v) for w, v in t.items()} for n, t in timed.items()}
    for m in medians.values():
        m.update(a_in_l2_net=net_of_copy(m), rounds=rounds)
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
                      "l2_mib": torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size / 2**20}),
          flush=True)
    for key in KEYS:
        medians, line = probe_key(key, configs.get(key), a.rounds)
        for name, m in medians.items():
            print(json.dumps({"key": list(key), "runner": name, "config": configs.get(key) if name == "tuned" else None,
                              **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in m.items()}}), flush=True)
        print(json.dumps({"summary": line}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
