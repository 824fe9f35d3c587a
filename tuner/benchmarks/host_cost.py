"""Host time per GEMM call on the eager path: cuBLAS (aten::mm), FlagGems' mm, tuner's split-K
(also split in two, with and without its reduction fused), persistent and stream-K kernels, on a
tiny key where the GPU is idle and the CPU sets the pace. The router takes a route outside CUDA
graphs only where the GPU gain pays the extra host time. Prints one JSON line.

Then torch.mm through tuner's GEMM router, installed as serving installs it: the same key routed
eagerly to the persistent kernel (`router_persistent_us`) and a key its plan leaves native
(`router_native_us`): what the engine's aten::mm pays on top of the kernel's own launch.

tuner's kernels are timed twice: as they launch (kernels/direct_launch.py: a specialisation seen
before goes straight to its binary) and through Triton's own dispatch (`triton_dispatch`, TUNER_DIRECT_LAUNCH=0).

`--profile NAME [NAME ...]` (e.g. persistent_us persistent_host_desc_us) then runs those calls under
cProfile both ways and prints where their host time goes, own time first. The persistent kernel's
host cost was 47 us a call in session 5, 106 in session 12 and 51-65 on session 14's hosts through
Triton's dispatch (cuBLAS 13.7-20.2 across them): mostly the host, not the code.
"""

import json
import time

import torch


def per_call_us(fn, n: int = 3000) -> float:
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


NAMES = ("cublas_us", "flaggems_us", "splitk_us", "splitk_sk2_us", "splitk_fused_sk2_us", "persistent_us",
         "persistent_host_desc_us", "streamk_us", "streamk_host_desc_us")
PERS = dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, GROUP_M=1, num_warps=4, num_stages=2)
TUNERS = NAMES[2:]  # tuner's own kernels: launched directly or through Triton's dispatch
ROUNDS = 4  # alternations of the two ways for each of TUNERS
# the tiny key's record for the router: a win that passes the eager rule (native - tuned >=
# EAGER_HOST_US), since this times the routing path as the engine's prefill takes it (outside a capture)
ROUTED_RECORD = {"kernel": "mm", "key": {"M": 16, "N": 128, "K": 64, "BT": 1}, "dtype": "bf16",
                 "config": {"variant": "persistent", **PERS}, "time_us": 1.0, "native_us": 100.0}


def calls() -> dict:
    """The eager calls timed, by the name of their JSON field (NAMES, in that order)."""
    from kernels.mm import flag_gems_mm_module
    from kernels.persistent_mm import persistent_mm
    from kernels.streamk_mm import streamk_mm
    from kernels.triton_mm import splitk_mm

    a = torch.randn(16, 64, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(128, 64, device="cuda", dtype=torch.bfloat16)
    fg = flag_gems_mm_module()
    split = dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, GROUP_M=1, SPLIT_K=1, num_warps=4, num_stages=2)
    return {
        "cublas_us": lambda: torch.mm(a, w.t()),
        "flaggems_us": lambda: fg.mm(a, w.t()),
        "splitk_us": lambda: splitk_mm(a, w.t(), split),
        # split in two: the GEMM and its reduce kernel, or one launch with the reduction fused
        "splitk_sk2_us": lambda: splitk_mm(a, w.t(), split | {"BLOCK_K": 32, "SPLIT_K": 2}),
        "splitk_fused_sk2_us": lambda: splitk_mm(a, w.t(), split | {"BLOCK_K": 32, "SPLIT_K": 2, "FUSED_REDUCE": 1}),
        "persistent_us": lambda: persistent_mm(a, w.t(), PERS),
        # descriptors built here (three TensorDescriptors, no scratch) instead of in every program
        "persistent_host_desc_us": lambda: persistent_mm(a, w.t(), PERS | {"HOST_DESC": 1}),
        "streamk_us": lambda: streamk_mm(a, w.t(), PERS),
        "streamk_host_desc_us": lambda: streamk_mm(a, w.t(), PERS | {"HOST_DESC": 1}),
    }


def routed_us() -> dict:
    """torch.mm through the router on the tiny key: routed to the persistent kernel (every call
    must reach it: `router_hits`) and a key (N = 192) left native; the router is uninstalled after."""
    from kernels.persistent_mm import Unsupported, persistent_mm
    from tuner.inject import gemm_router as gr

    router = gr.install_router(gr.plan_routes([ROUTED_RECORD], max_tokens=16),
                               gr.Targets(persistent_mm=persistent_mm, unsupported=Unsupported))
    try:
        a = torch.randn(16, 64, device="cuda", dtype=torch.bfloat16)
        w, w_native = (torch.randn(n, 64, device="cuda", dtype=torch.bfloat16) for n in (128, 192))
        out = {"router_persistent_us": per_call_us(lambda: torch.mm(a, w.t())),
               "router_native_us": per_call_us(lambda: torch.mm(a, w_native.t()))}
        return out | {"router_hits": router.hits[gr.PERSISTENT]}
    finally:
        router.uninstall()


def profile_lines(fn, n: int = 2000, top: int = 20) -> list[str]:
    """cProfile's table of `n` calls of fn (warmed up first), own time first, `top` rows."""
    import cProfile
    import io
    import pstats

    per_call_us(fn, n=50)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue().splitlines()


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Host time per eager GEMM call by kernel, the GPU idle (GPU only).")
    ap.add_argument("--profile", nargs="+", default=[], metavar="NAME",
                    help=f"also run these calls under cProfile: {', '.join(NAMES)}")
    args = ap.parse_args(argv)
    unknown = [n for n in args.profile if n not in NAMES]
    if unknown:
        ap.error(f"unknown call(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    fns = calls()
    assert tuple(fns) == NAMES, "host_cost.NAMES and calls() name the same calls"
    import triton

    import kernels.direct_launch as direct

    direct_on = direct.ENABLED
    out = {name: per_call_us(fn) for name, fn in fns.items() if name not in TUNERS}
    # the two ways alternate, best of ROUNDS passes each (the same number on both sides): two passes
    # of one way in one process differed by up to 22 us a call on the H200 host (session 14, fused
    # split-K 61.6 vs 39.9), more than the difference being measured
    out["triton_dispatch"] = {}
    for name in TUNERS:
        ways = {True: [], False: []}
        for _ in range(ROUNDS):
            for way in (False, direct_on):
                direct.ENABLED = way
                ways[way].append(per_call_us(fns[name], n=1000))
        direct.ENABLED = direct_on
        out[name], out["triton_dispatch"][name] = min(ways[direct_on]), min(ways[False])
    out = {name: out[name] for name in NAMES} | {"triton_dispatch": out["triton_dispatch"]}  # NAMES' order
    out |= routed_us()
    out |= {"direct_launch": direct_on, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__}
    print(json.dumps(out))
    for name in args.profile:
        for way, on in (("as launched", direct_on), ("through Triton's dispatch", False)):
            direct.ENABLED = on
            print(f"--- cProfile of {name} {way}, 2000 calls:")
            print("\n".join(profile_lines(fns[name])))
        direct.ENABLED = direct_on


if __name__ == "__main__":
    main()
