"""Where does stream-K lose its partial-wave keys? An experiment for issue 12 (H200, session 9's
gemm.db: at qkv M=512 stream-K's 128x256 tiles took 42.8 us, the persistent kernel's one tile per
program 41.5, cuBLAS 25.7; stream-K gives each program 31 of the 56 K iterations the persistent
kernel's programs run, so at the persistent kernel's speed per iteration it would take ~23 us).

Per key, one tile config run by the persistent kernel (one whole tile per program, waves) and by
stream-K with every knob it has: the last whole wave split with the partial one (SK_TAIL_ONLY=0)
or only the partial wave's tiles (1), on the kernel's own or the host's descriptors (HOST_DESC);
cuBLAS beside. Timed as the search times (tuner.benchmarks.side_by_side). Each stream-K time is set
against its share of the persistent kernel's: the persistent time scaled by the K iterations one
program runs (the most any program runs: stream-K's waves end with the slowest). `sk_over_share`
near 1 means stream-K's iterations run as fast as the persistent kernel's and its fixups are
cheap; session 9's numbers put it near 2 at M=512, which neither the fixup traffic (one fp32 tile
a program) nor the waits (partials are posted first) explain.

usage: python -m tuner.benchmarks.streamk_probe   (on the GPU host; one JSON line per key x tile)
"""

from __future__ import annotations

import json

import torch
import triton

TILES = [dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4),
         dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)]
# (M, N, K), bias or not: the keys whose tiles leave a partial wave on 132 SMs (results/gemm_h200)
KEYS = [((512, 4608, 3584), True), ((512, 3584, 3584), False), ((512, 3584, 18944), False),
        ((1500, 1024, 1024), True), ((1500, 1024, 4096), True), ((1500, 3584, 1024), True)]
FORMS = {"sk": {}, "sk_tail": {"SK_TAIL_ONLY": 1}, "sk_host": {"HOST_DESC": 1},
         "sk_tail_host": {"SK_TAIL_ONLY": 1, "HOST_DESC": 1}}


def iterations_per_program(M: int, N: int, K: int, config: dict, sm_count: int,
                           splits: tuple[int, ...] = ()) -> dict[str, int]:
    """The most K iterations one program runs: the persistent kernel (whole tiles, waves) and
    stream-K with each SK_TAIL_ONLY (its data-parallel tiles plus its share of the rest); with
    `splits`, also SK_TAIL_ONLY with each SK_SPLIT (`sk_split<s>`: the tail shared by s programs a tile)."""
    from kernels.persistent_mm import num_programs
    from kernels.streamk_mm import dp_tiles, programs_for, sk_programs

    tiles = triton.cdiv(M, config["BLOCK_M"]) * triton.cdiv(N, config["BLOCK_N"])
    k_tiles = triton.cdiv(K, config["BLOCK_K"])
    out = {"persistent": triton.cdiv(tiles, num_programs(M, N, config, sm_count)) * k_tiles}
    programs = programs_for(M, N, config, sm_count)
    for name, tail in (("sk", False), ("sk_tail", True)):
        dp = dp_tiles(tiles, programs, tail)
        out[name] = triton.cdiv(dp, programs) * k_tiles + triton.cdiv((tiles - dp) * k_tiles, programs)
    dp = dp_tiles(tiles, programs, True)
    for split in splits:
        sk = sk_programs(tiles, dp, programs, split)
        out[f"sk_split{split}"] = triton.cdiv(dp, programs) * k_tiles + triton.cdiv((tiles - dp) * k_tiles, sk)
    return out


def runs_of(config: dict, forms: dict[str, dict], has_bias: bool) -> dict:
    """side_by_side's runs: `config` through the persistent kernel, through stream-K with each form's
    knobs, and cuBLAS."""
    from kernels.persistent_mm import persistent_mm
    from kernels.streamk_mm import streamk_mm
    from tuner.benchmarks.side_by_side import cublas

    runs = {"persistent": lambda args, out: persistent_mm(args[0], args[1].t(), config, out=out, bias=args[2])}
    for name, knobs in forms.items():
        runs[name] = (lambda cfg: lambda args, out: streamk_mm(args[0], args[1].t(), cfg, out=out,
                                                               bias=args[2]))(config | knobs)
    runs["cublas"] = cublas(has_bias)
    return runs


def probe(shape: tuple[int, int, int], has_bias: bool, config: dict) -> dict:
    from kernels.persistent_mm import sm_count_of
    from tuner.benchmarks.side_by_side import rel_error, rotated_sets, time_side_by_side

    M, N, K = shape
    timed, outs = time_side_by_side(runs_of(config, FORMS, has_bias), rotated_sets(M, N, K, has_bias), M, N)
    iters = iterations_per_program(M, N, K, config, sm_count_of(torch.device("cuda")))
    row: dict = {"key": list(shape), "bias": has_bias, "config": config, **timed, "iterations_per_program": iters}
    per_iteration = timed["persistent_us"] / iters["persistent"]
    for name in FORMS:
        share = per_iteration * iters["sk_tail" if "tail" in name else "sk"]
        row[f"{name}_over_share"] = round(timed[f"{name}_us"] / share, 3)
        row[f"{name}_over_cublas"] = round(timed[f"{name}_us"] / timed["cublas_us"], 3)
    row["persistent_over_cublas"] = round(timed["persistent_us"] / timed["cublas_us"], 3)
    # the host's descriptors change nothing but where they are built: the same bits
    row["host_equals_own"] = bool(torch.equal(outs["sk_host"], outs["sk"])
                                  and torch.equal(outs["sk_tail_host"], outs["sk_tail"]))
    row["rel_error_vs_cublas"] = max(rel_error(outs[name], outs["cublas"]) for name in FORMS)
    return row


def main() -> None:
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}))
    for shape, has_bias in KEYS:
        for config in TILES:
            try:
                row = probe(shape, has_bias, config)
            except Exception as e:  # noqa: BLE001 — a case that fails is reported, the others still run
                row = {"key": list(shape), "config": config, "error": f"{type(e).__name__}: {e}"[:400]}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
