"""Helpers for the injection tests (the subprocess helpers they use are in tests/conftest.py)."""
from __future__ import annotations

from tests.conftest import H100

# Code for run_py: LibTuner.run up to the JIT launch, with FlagGems' own key computation and
# cache lookup; a miss would benchmark, which raises. Returns the launch's keyword arguments
# (the config's meta-parameters among them).
LIBTUNER_LAUNCH = """
def launch_kwargs(t, args):
    def no_bench(*a, **k):
        raise AssertionError("LibTuner benchmarked: cache miss")
    class Launch:
        def run(self, *args, **kwargs):
            self.kwargs = kwargs
    t._bench, t.fn = no_bench, Launch()
    t.run(*args.values(), grid=lambda meta: (1,))
    return t.fn.kwargs
"""


def env_of(gpu_name: str = H100) -> dict:
    import triton

    return {"gpu_name": gpu_name, "triton": triton.__version__, "flag_gems": "5.0.2",
            "torch": "2.13.0"}


def moe_record(M: int, bm: int = 64, *, E=128, N=768, K=2048, top_k=8, dtype="bf16", gpu=H100,
               kernel="fused_moe"):
    """A fused MoE record timed in FlagGems' kernel (fused_moe) or vLLM's (vllm_fused_moe)."""
    return {"kernel": kernel, "key": {"E": E, "N": N, "K": K, "top_k": top_k, "M": M},
            "dtype": dtype,
            "config": {"BLOCK_SIZE_M": bm, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 64,
                       "GROUP_SIZE_M": 8, "num_warps": 4, "num_stages": 3},
            "environment": env_of(gpu), "kernel_source_hash": "moe-src"}
