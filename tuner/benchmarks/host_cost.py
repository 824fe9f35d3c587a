"""Host time per GEMM call on the eager path: cuBLAS (aten::mm), FlagGems' mm, tuner's split-K
(also split in two, with and without its reduction fused), persistent and stream-K kernels, on a
tiny key where the GPU is idle and the CPU sets the pace. The router takes a route outside CUDA
graphs only where the GPU gain pays the extra host time. Prints one JSON line.
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


def main() -> None:
    from kernels.mm import flag_gems_mm_module
    from kernels.persistent_mm import persistent_mm
    from kernels.streamk_mm import streamk_mm
    from kernels.triton_mm import splitk_mm

    a = torch.randn(16, 64, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(128, 64, device="cuda", dtype=torch.bfloat16)
    fg = flag_gems_mm_module()
    pers = dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, GROUP_M=1, num_warps=4, num_stages=2)
    split = dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, GROUP_M=1, SPLIT_K=1, num_warps=4, num_stages=2)
    out = {
        "cublas_us": per_call_us(lambda: torch.mm(a, w.t())),
        "flaggems_us": per_call_us(lambda: fg.mm(a, w.t())),
        "splitk_us": per_call_us(lambda: splitk_mm(a, w.t(), split)),
        # split in two: the GEMM and its reduce kernel, or one launch with the reduction fused
        "splitk_sk2_us": per_call_us(lambda: splitk_mm(a, w.t(), split | {"BLOCK_K": 32, "SPLIT_K": 2})),
        "splitk_fused_sk2_us": per_call_us(
            lambda: splitk_mm(a, w.t(), split | {"BLOCK_K": 32, "SPLIT_K": 2, "FUSED_REDUCE": 1})),
        "persistent_us": per_call_us(lambda: persistent_mm(a, w.t(), pers)),
        # descriptors built here (three TensorDescriptors, no scratch) instead of in every program
        "persistent_host_desc_us": per_call_us(lambda: persistent_mm(a, w.t(), pers | {"HOST_DESC": 1})),
        "streamk_us": per_call_us(lambda: streamk_mm(a, w.t(), pers)),
        "streamk_host_desc_us": per_call_us(lambda: streamk_mm(a, w.t(), pers | {"HOST_DESC": 1})),
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
