"""Helpers for the injection tests: real flag_gems / vllm, each in a clean subprocess.

FlagGems imports without a GPU only with GEMS_VENDOR=nvidia and FLAGGEMS_DB_URL set
(ARCH=sm_90 selects the Hopper modules) and never under TRITON_INTERPRET=1; vLLM reads
several settings at import. So both run in subprocesses with an explicit environment.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
H100 = "NVIDIA H100 80GB HBM3"

needs_flag_gems = pytest.mark.skipif(
    importlib.util.find_spec("flag_gems") is None,
    reason="flag_gems not installed (pip install --no-deps flag-gems==5.0.2)",
)
needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vllm not installed (pip install --no-deps vllm==0.33.0 plus its small deps, see .ci/run)",
)


def run_py(code: str, env: dict[str, str] | None = None, timeout: int = 120) -> str:
    """Run `code` in a fresh interpreter with a minimal environment; return stdout+stderr.

    The code prints a final line `RESULT <json>`; use `result()` to read it.
    """
    # the caller's PYTHONPATH stays behind the checkout: on the GPU host flag_gems is installed
    # there (tuner/benchmarks/gpu_env.sh), not in site-packages
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    base = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": path,
            "HOME": os.environ.get("HOME", "/tmp"), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                          env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


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


def result(out: str):
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, out[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture
def fg_env(tmp_path):
    """Environment for a FlagGems subprocess with its cache DB and home in tmp_path."""
    home = tmp_path / "home"
    home.mkdir()
    return {"GEMS_VENDOR": "nvidia", "ARCH": "sm_90", "HOME": str(home),
            "FLAGGEMS_DB_URL": f"sqlite:///{tmp_path / 'flaggems.db'}"}


def env_of(gpu_name: str = H100) -> dict:
    import triton

    return {"gpu_name": gpu_name, "triton": triton.__version__, "flag_gems": "5.0.2",
            "torch": "2.13.0"}


def moe_record(M: int, bm: int = 64, *, E=128, N=768, K=2048, top_k=8, dtype="bf16", gpu=H100):
    return {"kernel": "fused_moe", "key": {"E": E, "N": N, "K": K, "top_k": top_k, "M": M},
            "dtype": dtype,
            "config": {"BLOCK_SIZE_M": bm, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 64,
                       "GROUP_SIZE_M": 8, "num_warps": 4, "num_stages": 3},
            "environment": env_of(gpu), "kernel_source_hash": "moe-src"}
