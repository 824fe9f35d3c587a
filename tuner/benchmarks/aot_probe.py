"""Compile tuner's persistent TMA GEMMs for sm_90 on a machine without a GPU, as the GPU host's
Triton would, and report what each config compiles to: whether it compiles at all, its shared
memory (and whether it fits an SM's 227 KiB), registers and stack (spills), wgmma, and whether WARP_SPECIALIZE split the loop into warp groups (setmaxnreg in the PTX).
With --pairs, each WARP_SPECIALIZE=1 config's cubin is compared with its WARP_SPECIALIZE=0 twin's:
identical binaries mean the search would measure one kernel twice.

Triton compiles for an explicit target (GPUTarget("cuda", 90, 32)) with the ptxas its wheel ships:
no driver is needed. Use the GPU host's Triton (3.6.0 for torch 2.11), e.g. in a venv beside the
CPU torch: `python -m venv --system-site-packages /tmp/t36 && /tmp/t36/bin/pip install triton==3.6.0`.

usage: python -m tuner.benchmarks.aot_probe --op mm|scaled_mm --shape M,N,K [--variant persistent|streamk]
           [--sample N] [--seed S] [--warps 4|8] [--ws-only] [--pairs] [--jobs 2] > probe.jsonl
       python -m tuner.benchmarks.aot_probe --op mm --starts --shape M,N,K [--shape ...]   (warm starts)
       python -m tuner.benchmarks.aot_probe --op mm --shape M,N,K --configs cfgs.jsonl [--host-too] [--ctas-too]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import random
import sys
from concurrent.futures import ProcessPoolExecutor

KNOBS = ("WARP_SPECIALIZE", "FLATTEN", "EPILOGUE_SUBTILE")  # the persistent kernels' flags
# (op, variant[, "host"]) -> (module, kernel, argument types, constexprs the op's configs do not set, flags it
# takes); "host": the config's HOST_DESC=1 form, its descriptors' blocks filled in from the config
KERNELS = {
    ("mm", "persistent"): ("kernels.persistent_mm", "persistent_mm_kernel",
                           {"A": "*bf16", "B": "*bf16", "C": "*bf16", "BIAS": "*bf16", "M": "i32", "N": "i32",
                            "K": "i32", "stride_am": "i32", "stride_b": "i32", "stride_cm": "i32",
                            "NUM_PROGRAMS": "i32"},
                           {"B_NK": True, "IEEE": False}, KNOBS),
    ("mm", "persistent", "host"): ("kernels.persistent_host_mm", "persistent_host_mm_kernel",
                                   {"a_desc": "tensordesc<bf16[{bm}, {bk}]>", "b_desc": "tensordesc<bf16[{bn}, {bk}]>",
                                    "c_desc": "tensordesc<bf16[{bm}, {cn}]>", "BIAS": "*bf16", "M": "i32",
                                    "N": "i32", "K": "i32", "NUM_PROGRAMS": "i32"},
                                   {"B_NK": True, "IEEE": False}, KNOBS),
    ("mm", "streamk"): ("kernels.streamk_mm", "streamk_mm_kernel",
                        {"A": "*bf16", "B": "*bf16", "C": "*bf16", "BIAS": "*bf16", "WS": "*fp32", "FLAGS": "*i32",
                         "M": "i32", "N": "i32", "K": "i32", "stride_am": "i32", "stride_b": "i32",
                         "stride_cm": "i32", "NUM_PROGRAMS": "i32", "DP_TILES": "i32", "SK_PROGRAMS": "i32"},
                        {"B_NK": True, "IEEE": False}, ("HOST_DESC",)),
    # the same kernel on the host's descriptors (its C block half a tile wide, as it stores C)
    ("mm", "streamk", "host"): ("kernels.streamk_mm", "streamk_mm_kernel",
                                {"A": "tensordesc<bf16[{bm}, {bk}]>", "B": "tensordesc<bf16[{bn}, {bk}]>",
                                 "C": "tensordesc<bf16[{bm}, {half}]>", "BIAS": "*bf16", "WS": "*fp32",
                                 "FLAGS": "*i32", "M": "i32", "N": "i32", "K": "i32", "stride_am": "i32",
                                 "stride_b": "i32", "stride_cm": "i32", "NUM_PROGRAMS": "i32", "DP_TILES": "i32",
                                 "SK_PROGRAMS": "i32"},
                                {"B_NK": True, "IEEE": False}, ("HOST_DESC",)),
    ("scaled_mm", "persistent"): ("kernels.fp8_mm", "fp8_mm_kernel",
                                  {"A": "*fp8e4nv", "B": "*fp8e4nv", "C": "*bf16", "SCALE_A": "*fp32",
                                   "SCALE_B": "*fp32", "BIAS": "*bf16", "M": "i32", "N": "i32", "K": "i32",
                                   "stride_am": "i32", "stride_bn": "i32", "stride_cm": "i32", "NUM_PROGRAMS": "i32"},
                                  {}, (*KNOBS, "PRECISE_ACC")),
}
DTYPES = {"mm": "bf16", "scaled_mm": "fp8_w8a8"}


def compile_config(op: str, cfg: dict):
    """Triton's compiled kernel of `cfg` (a persistent or stream-K config of `op`) for sm_90; raises
    what Triton raises."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    # HOST_DESC=1: the kernel's arguments are descriptors of the config's blocks (B = Wᵀ's N x K)
    entry = (op, cfg["variant"], "host") if cfg.get("HOST_DESC") else (op, cfg["variant"])
    module, name, types, fixed, knobs = KERNELS[entry]
    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    types = {k: v.format(bm=bm, bn=bn, bk=bk, half=bn // 2, cn=bn // 2 if cfg.get("EPILOGUE_SUBTILE") else bn)
             for k, v in types.items()}
    fn = getattr(importlib.import_module(module), name)
    const = {"BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": cfg["BLOCK_K"], "GROUP_M": cfg["GROUP_M"],
             "HAS_BIAS": False, **{k: bool(cfg.get(k, 0)) for k in knobs}, **fixed}
    signature = {**types, **{k: "constexpr" for k in const}}
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=const), target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"],
                                   "num_ctas": cfg.get("num_ctas", 1)})


def resource_usage(cubin: bytes) -> dict:
    """Registers per thread and stack bytes (spilled registers live there) of the kernel, from
    `cuobjdump -res-usage` (shipped in Triton's wheel beside ptxas); {} when it cannot say."""
    import os
    import re
    import subprocess
    import tempfile

    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        try:
            out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.TimeoutExpired):
            return {}
    m = re.search(r"REG:(\d+) STACK:(\d+)", out)
    return {"registers": int(m.group(1)), "stack": int(m.group(2))} if m else {}


def probe(job: tuple[str, dict, bool]) -> dict:
    """One config compiled: the row the probe prints."""
    op, cfg, pairs = job
    row: dict = {"op": op, "config": cfg}
    try:
        k = compile_config(op, cfg)
    except Exception as e:  # Triton's own failures (an MLIR pass, out of resources): the finding
        return row | {"compiles": False, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}"}
    from kernels.mm import SMEM_BY_ARCH

    ptx = k.asm["ptx"]
    # shared memory is checked when the kernel is loaded, not compiled: judged here against sm_90's
    row |= {"compiles": True, "shared": k.metadata.shared, "fits": k.metadata.shared <= SMEM_BY_ARCH[9],
            "warps": k.metadata.num_warps,
            "wgmma": "wgmma.mma_async" in ptx, "warp_groups": "setmaxnreg" in ptx,
            # num_ctas > 1: a cluster shares each tile; only TMA multicast would cut the operands' loads
            "ctas": k.metadata.num_ctas, "tma_multicast": "multicast::cluster" in ptx}
    row |= resource_usage(k.asm["cubin"])
    if pairs and cfg.get("WARP_SPECIALIZE"):
        twin = compile_config(op, cfg | {"WARP_SPECIALIZE": 0})
        row["same_binary_as_ws0"] = hashlib.sha256(k.asm["cubin"]).digest() == hashlib.sha256(twin.asm["cubin"]).digest()
    return row


def _key(op: str, key: tuple) -> tuple:
    return (*key, 1) if op == "mm" and len(key) == 3 else key


def sample(op: str, key: tuple, n: int, seed: int, warps: int | None, ws_only: bool,
           variant: str = "persistent") -> list[dict]:
    """n random configs of one variant in the op's grid for `key` (every one when n is 0)."""
    from kernels import get_kernel
    from tuner.tuning.candidates import grid_configs

    configs = [c for c in grid_configs(get_kernel(op), _key(op, key), DTYPES[op], "cuda") if c["variant"] == variant
               and (warps is None or c["num_warps"] == warps) and (not ws_only or c.get("WARP_SPECIALIZE"))]
    return random.Random(seed).sample(configs, n) if 0 < n < len(configs) else configs


def warm_starts(op: str, keys: list[tuple]) -> list[dict]:
    """The op's warm starts (starting_configs) of every key that this probe can compile, once each."""
    from kernels import get_kernel

    kernel, out = get_kernel(op), []
    for key in keys:
        for c in kernel.starting_configs(_key(op, key), DTYPES[op], "cuda"):
            if (op, c["variant"]) in KERNELS and c not in out:
                out.append(c)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--op", choices=sorted(DTYPES), required=True)
    ap.add_argument("--shape", required=True, action="append", help="M,N,K (repeatable with --starts)")
    ap.add_argument("--variant", default="persistent", choices=("persistent", "streamk"))
    ap.add_argument("--starts", action="store_true", help="the warm starts of every --shape, not a sample")
    ap.add_argument("--sample", type=int, default=100, help="configs to compile (0: every one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warps", type=int, choices=(4, 8))
    ap.add_argument("--ws-only", action="store_true", help="only configs with WARP_SPECIALIZE=1")
    ap.add_argument("--pairs", action="store_true", help="compare each WARP_SPECIALIZE=1 binary with its twin's")
    ap.add_argument("--configs", help="a file of configs, one JSON object a line (e.g. an earlier probe's sample, "
                                       "to compile the same configs after a kernel edit)")
    ap.add_argument("--host-too", action="store_true",
                    help="each config also with HOST_DESC=1 (the host's descriptors)")
    ap.add_argument("--ctas-too", action="store_true",
                    help="each config also with num_ctas=2 (a 2-CTA cluster a tile: does TMA multicast appear?)")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    keys = [tuple(int(x) for x in text.split(",")) for text in args.shape]
    if args.configs:
        with open(args.configs) as f:
            configs = [json.loads(line) for line in f if line.strip()]
    elif args.starts:
        configs = warm_starts(args.op, keys)
    elif len(keys) == 1:
        configs = sample(args.op, keys[0], args.sample, args.seed, args.warps, args.ws_only, args.variant)
    else:
        ap.error("one --shape for a sample (several only with --starts)")
    if args.host_too:
        configs += [c | {"HOST_DESC": 1} for c in configs]
    if args.ctas_too:
        configs += [c | {"num_ctas": 2} for c in configs]
    import triton

    print(f"# {len(configs)} configs of {args.op} {' '.join(args.shape)}, triton {triton.__version__}, sm_90",
          file=sys.stderr)
    with ProcessPoolExecutor(args.jobs) as ex:
        for row in ex.map(probe, [(args.op, c, args.pairs) for c in configs]):
            print(json.dumps(row | {"shapes": args.shape, "triton": triton.__version__}), flush=True)


if __name__ == "__main__":
    main()
