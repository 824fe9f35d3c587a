"""What Triton makes of the persistent GEMM's warp-specialised K loop on this GPU (issue 12: "a
warp-specialised main loop where Triton supports it on sm_90: find out").

Compiles kernels/persistent_mm.py's kernel for the o projection at M=4096 with WARP_SPECIALIZE 0
and 1 (and FLATTEN, as tutorial 09 pairs them) and reports, from the compiled TTGIR and PTX,
whether the loop was split into warp groups (`ttg.warp_specialize` in the TTGIR; `setmaxnreg`,
which producer/consumer warp groups use to trade registers, in the PTX), whether the dot runs as
wgmma, and the warps the kernel launches with. A compile error is reported, not raised.

usage: python -m tuner.benchmarks.ws_probe   (on the GPU host; prints one JSON line per config)
"""

from __future__ import annotations

import json

KEY = (4096, 3584, 3584, 1)
BASE = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4)


def probe(config: dict) -> dict:
    from kernels.persistent_mm import persistent_warmup

    row: dict = {"config": config}
    try:
        compiled = persistent_warmup(KEY, "bf16", config)
    except Exception as e:  # noqa: BLE001 — what failed is the finding
        return row | {"error": f"{type(e).__name__}: {e}"[:400]}
    ttgir, ptx = compiled.asm.get("ttgir", ""), compiled.asm.get("ptx", "")
    return row | {
        "ttgir_warp_specialize": "ttg.warp_specialize" in ttgir,
        "ptx_setmaxnreg": "setmaxnreg" in ptx,
        "ptx_wgmma": "wgmma.mma_async" in ptx,
        "num_warps": getattr(compiled.metadata, "num_warps", None),
        "shared_bytes": getattr(compiled.metadata, "shared", None),
    }


def main() -> None:
    import torch
    import triton

    print(json.dumps({"gpu": torch.cuda.get_device_name(), "triton": triton.__version__}))
    for knobs in ({}, {"WARP_SPECIALIZE": 1}, {"FLATTEN": 1}, {"WARP_SPECIALIZE": 1, "FLATTEN": 1}):
        print(json.dumps(probe(BASE | knobs)))


if __name__ == "__main__":
    main()
